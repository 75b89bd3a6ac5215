//! When anti-entropy rounds run, without IO: the interval between a node's
//! rounds and how many peers each round talks to. The agent's sync loop
//! and the spread simulation ([`crate::sim::spread`]) both follow it.

use std::time::Duration;

/// Sync interval while rounds find things to repair (jittered ±50%).
pub const SYNC_BASE: Duration = Duration::from_secs(1);

/// Longest sync interval after idle rounds.
pub const SYNC_MAX: Duration = Duration::from_secs(4);

/// Peers each sync round exchanges bookkeeping with, one after the other.
pub const SYNC_PEERS: usize = 3;

/// The interval after a round that brought `moved` changesets: back to
/// [`SYNC_BASE`] when it repaired something, doubled (up to [`SYNC_MAX`])
/// when it found nothing to do.
pub fn next_interval(interval: Duration, moved: usize) -> Duration {
    if moved == 0 {
        (interval * 2).min(SYNC_MAX)
    } else {
        SYNC_BASE
    }
}

/// The wait before the next round: `interval` jittered by `jitter` in
/// `0.5..1.5` (drawn by the caller).
pub fn jittered(interval: Duration, jitter: f64) -> Duration {
    interval.mul_f64(jitter.clamp(0.5, 1.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_rounds_back_off_and_a_repair_resets() {
        let mut i = SYNC_BASE;
        i = next_interval(i, 0);
        assert_eq!(i, Duration::from_secs(2));
        i = next_interval(next_interval(i, 0), 0);
        assert_eq!(i, SYNC_MAX);
        assert_eq!(next_interval(i, 3), SYNC_BASE);
        assert_eq!(jittered(SYNC_MAX, 9.0), SYNC_MAX.mul_f64(1.5));
    }
}
