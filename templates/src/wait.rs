//! The quiescence wait (consul-template's `wait = "min:max"`).
//!
//! After a change, a template renders once no further change has come for
//! `min`; a burst of changes therefore causes one render. So that constant
//! churn cannot postpone a render forever, it renders at the latest `max`
//! after the first change of the burst. Plain state over instants given by
//! the caller: tests drive it without a clock.

use std::time::{Duration, Instant};

/// The `min:max` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Wait {
    /// 100 ms, at most 400 ms.
    fn default() -> Self {
        Wait::new(Duration::from_millis(100), None)
    }
}

impl Wait {
    /// `max` defaults to 4 × `min` (and is never below `min`).
    pub fn new(min: Duration, max: Option<Duration>) -> Wait {
        Wait {
            min,
            max: max.unwrap_or(min * 4).max(min),
        }
    }

    /// Parses `"min"` or `"min:max"` with `duration` parsing each part.
    pub fn parse(text: &str, duration: impl Fn(&str) -> Option<Duration>) -> Option<Wait> {
        match text.split_once(':') {
            Some((a, b)) => {
                let (min, max) = (duration(a)?, duration(b)?);
                (max >= min).then_some(Wait { min, max })
            }
            None => Some(Wait::new(duration(text)?, None)),
        }
    }
}

/// Changes seen and not yet rendered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quiescence {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Quiescence {
    /// A change happened at `now`.
    pub fn change(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When to render (`None`: nothing pending).
    pub fn deadline(&self, wait: Wait) -> Option<Instant> {
        Some((self.last? + wait.min).min(self.first? + wait.max))
    }

    /// Whether a render is due at `now`.
    pub fn due(&self, wait: Wait, now: Instant) -> bool {
        self.deadline(wait).is_some_and(|d| d <= now)
    }

    /// Rendering now: what was pending is taken.
    pub fn clear(&mut self) {
        *self = Quiescence::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_burst_renders_once_after_it_settles() {
        let w = Wait::new(100 * MS, None);
        let t0 = Instant::now();
        let mut q = Quiescence::default();
        for i in 0..10 {
            q.change(t0 + i * 10 * MS);
        }
        assert!(!q.due(w, t0 + 150 * MS));
        assert_eq!(q.deadline(w), Some(t0 + 190 * MS));
    }

    #[test]
    fn constant_churn_renders_at_max() {
        let w = Wait::new(100 * MS, Some(300 * MS));
        let t0 = Instant::now();
        let mut q = Quiescence::default();
        for i in 0..100 {
            q.change(t0 + i * 50 * MS);
            if q.due(w, t0 + i * 50 * MS) {
                assert!(i * 50 >= 300, "rendered too early at {i}");
                return;
            }
        }
        panic!("never due under churn");
    }

    #[test]
    fn parse_forms() {
        let d = |s: &str| {
            s.strip_suffix("ms")?
                .parse()
                .ok()
                .map(Duration::from_millis)
        };
        assert_eq!(
            Wait::parse("50ms", d),
            Some(Wait::new(50 * MS, Some(200 * MS)))
        );
        assert_eq!(
            Wait::parse("50ms:60ms", d),
            Some(Wait::new(50 * MS, Some(60 * MS)))
        );
        assert_eq!(Wait::parse("60ms:50ms", d), None);
        assert_eq!(Wait::parse("x", d), None);
    }
}
