//! Writing a rendered file: atomically, and only when it changed.
//!
//! The output goes to a temporary file in the destination's directory
//! (same filesystem, so the rename is atomic), is fsynced, given its mode
//! and renamed over the destination; the directory is fsynced after. A
//! reader therefore sees the old file or the new one, never a part. The
//! mode is `perms` when set, else the existing file's, else 0644. With
//! `backup`, the previous file is copied to `<destination>.bak` first.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// How a destination is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// File mode (e.g. 0o640); `None`: keep the existing one (0644 new).
    pub perms: Option<u32>,
    /// Copy the previous file to `<destination>.bak` before replacing it.
    pub backup: bool,
}

/// What [`write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The destination already held exactly this content (and mode).
    Unchanged,
    Replaced,
}

/// The backup path of a destination.
pub fn backup_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".bak");
    PathBuf::from(name)
}

/// Writes `content` to `dest` as the module doc says.
pub fn write(dest: &Path, content: &[u8], opts: &WriteOptions) -> std::io::Result<Written> {
    let existing_mode = fs::metadata(dest)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777);
    let mode = opts.perms.or(existing_mode).unwrap_or(0o644);
    if existing_mode == Some(mode) && fs::read(dest).is_ok_and(|old| old == content) {
        return Ok(Written::Unchanged);
    }
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(&dir)?;
    tmp.write_all(content)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    if opts.backup && existing_mode.is_some() {
        fs::copy(dest, backup_path(dest))?;
    }
    // On error the temporary file is removed when `tmp` drops.
    tmp.persist(dest).map_err(|e| e.error)?;
    // The rename is durable once the directory is.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(Written::Replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_keeps_mode_backs_up_and_skips_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.conf");
        let opts = WriteOptions::default();
        assert_eq!(write(&dest, b"one", &opts).unwrap(), Written::Replaced);
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o644
        );
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(write(&dest, b"one", &opts).unwrap(), Written::Unchanged);
        let backup = WriteOptions {
            perms: None,
            backup: true,
        };
        assert_eq!(write(&dest, b"two", &backup).unwrap(), Written::Replaced);
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        assert_eq!(fs::read(backup_path(&dest)).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let perms = WriteOptions {
            perms: Some(0o640),
            backup: false,
        };
        assert_eq!(write(&dest, b"two", &perms).unwrap(), Written::Replaced);
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
