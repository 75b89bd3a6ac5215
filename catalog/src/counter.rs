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
//!
//! The file is rewritten in place: a fixed-width number overwriting the
//! same bytes needs no new disk block, so the reservation moves on even
//! when the disk is full (a temporary file and a rename would fail then,
//! and values handed out past the last reservation would come again after
//! a restart). A reservation that cannot be written is reported to the
//! caller (the catalog logs it once per streak and keeps serving); one that
//! fails at start is logged and retried at the next change, so an agent
//! starts on a full disk.

use std::io::Write;
use std::os::unix::fs::FileExt;
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
    /// `None`); returns it and the value to start from (>= 1). Only reading
    /// the file can fail; a reservation that cannot be written yet is
    /// logged and retried at the next [`IndexCounter::reach`].
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
        let start = stored.saturating_add(1);
        let mut c = IndexCounter {
            path: path.map(Path::to_path_buf),
            reserved: stored,
        };
        if let Err(e) = c.reach(start) {
            tracing::error!(error = %e, "cannot write the X-Consul-Index counter file yet; retrying at the next change");
        }
        Ok((c, start))
    }

    /// Makes sure `value` is covered by the persisted reservation.
    pub fn reach(&mut self, value: u64) -> std::io::Result<()> {
        if value <= self.reserved {
            return Ok(());
        }
        let next = value.saturating_add(BLOCK);
        if let Some(p) = &self.path {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(p)?;
            // Fixed width: every rewrite covers the same bytes.
            let text = format!("{next:020}\n");
            f.write_all_at(text.as_bytes(), 0)?;
            let len = f.metadata()?.len();
            if len > text.len() as u64 {
                // A file in the older variable-width form.
                f.set_len(text.len() as u64)?;
            }
            f.flush()?;
            f.sync_data()?;
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
    fn an_older_file_form_is_read_and_rewritten_fixed_width() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index");
        std::fs::write(&p, "123456789012345678\n").unwrap();
        let (mut c, start) = IndexCounter::open(Some(&p)).unwrap();
        assert_eq!(start, 123456789012345679);
        c.reach(start + BLOCK + 1).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.len(), 21, "{text:?}");
        // A huge stored value saturates instead of overflowing.
        std::fs::write(&p, format!("{}\n", u64::MAX)).unwrap();
        let (_, start) = IndexCounter::open(Some(&p)).unwrap();
        assert_eq!(start, u64::MAX);
    }

    #[test]
    fn an_agent_starts_when_the_counter_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gone").join("index");
        let (mut c, start) = IndexCounter::open(Some(&p)).unwrap();
        assert_eq!(start, 1);
        assert!(c.reach(start + 1).is_err());
        std::fs::create_dir(dir.path().join("gone")).unwrap();
        c.reach(start + 1).unwrap();
        assert!(p.exists());
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
