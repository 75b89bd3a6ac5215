//! The persisted `X-Consul-Index` counter.
//!
//! Consul clients compare the index they were last given with the one an
//! answer carries, and restart their watch when it goes backwards; it must
//! therefore never decrease across restarts and never be 0. Writing the
//! file on every change would cost an fsync per change, so the counter
//! reserves blocks: the file holds a value the counter will not pass
//! without writing the file again, and a restarted agent starts just above
//! it (skipping at most one block of values, which clients never notice).
//!
//! A file that exists but does not hold a number (a disk error, a hand
//! edit) cannot say where the counter was. Starting again at 1 would move
//! every client's index backwards and past values they already hold, so
//! the counter then starts at the current time in milliseconds since the
//! epoch: above anything it can have handed out, since it would have had
//! to count one value per millisecond since 1970 to get there. The event
//! is logged as an error.

use std::path::{Path, PathBuf};

/// Values reserved per file write.
const BLOCK: u64 = 10_000;

/// Hands out the high-water mark; see the module doc.
#[derive(Debug)]
pub struct IndexCounter {
    path: Option<PathBuf>,
    reserved: u64,
}

impl IndexCounter {
    /// Opens the counter file at `path` (or an in-memory counter for
    /// `None`); returns it and the value to start from (>= 1).
    pub fn open(path: Option<&Path>) -> std::io::Result<(IndexCounter, u64)> {
        let stored = match path {
            Some(p) => match std::fs::read(p) {
                Ok(bytes) => match std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                {
                    Some(n) => n,
                    None => {
                        let floor = clock_floor();
                        tracing::error!(
                            path = %p.display(),
                            restart_at = floor,
                            "the X-Consul-Index counter file is corrupt; restarting the index above every value it can have handed out"
                        );
                        floor
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => return Err(e),
            },
            None => 0,
        };
        let start = stored + 1;
        let mut c = IndexCounter {
            path: path.map(Path::to_path_buf),
            reserved: stored,
        };
        c.reach(start)?;
        Ok((c, start))
    }

    /// Makes sure `value` is covered by the persisted reservation.
    pub fn reach(&mut self, value: u64) -> std::io::Result<()> {
        if value <= self.reserved {
            return Ok(());
        }
        let next = value + BLOCK;
        if let Some(p) = &self.path {
            let tmp = p.with_extension("tmp");
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                writeln!(f, "{next}")?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, p)?;
        }
        self.reserved = next;
        Ok(())
    }
}

/// Milliseconds since the epoch (see the module doc).
fn clock_floor() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_counter_starts_above_every_value_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index");
        let (mut c, start) = IndexCounter::open(Some(&p)).unwrap();
        assert_eq!(start, 1);
        for v in start..start + 25_000 {
            c.reach(v).unwrap();
        }
        let (_, again) = IndexCounter::open(Some(&p)).unwrap();
        assert!(again > start + 25_000, "{again}");
        let (_, third) = IndexCounter::open(Some(&p)).unwrap();
        assert!(third > again);
    }

    #[test]
    fn a_corrupt_counter_file_restarts_above_every_value_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index");
        let (mut c, _) = IndexCounter::open(Some(&p)).unwrap();
        c.reach(5_000_000).unwrap();
        for junk in [&b"garbage"[..], b"", b"\xff\xfe", b"12abc"] {
            std::fs::write(&p, junk).unwrap();
            let (_, start) = IndexCounter::open(Some(&p)).unwrap();
            assert!(start > 5_000_000 + BLOCK, "{start}");
        }
    }
}
