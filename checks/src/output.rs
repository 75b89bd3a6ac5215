//! Check output limits, as Consul applies them: probe output keeps its
//! last `max` bytes; a TTL update longer than `max` keeps its head and says
//! how much was captured.

/// Consul's `check_output_max_size` default.
pub const DEFAULT_MAX: usize = 4096;

/// The last `max` bytes of `bytes` as text (cut on a character boundary).
pub fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    let text = String::from_utf8_lossy(&bytes[start..]);
    // A multi-byte character cut at the start shows as U+FFFD; drop it.
    text.trim_start_matches('\u{FFFD}').to_string()
}

/// A TTL update's note: whole when it fits, else
/// `<head> ... (captured <max> of <len> bytes)`.
pub fn ttl_note(note: &str, max: usize) -> String {
    if note.len() <= max {
        return note.to_string();
    }
    let mut cut = max;
    while !note.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{} ... (captured {max} of {} bytes)",
        &note[..cut],
        note.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_and_heads_are_capped() {
        assert_eq!(tail(b"hello world", 5), "world");
        assert_eq!(tail(b"hi", 5), "hi");
        assert_eq!(tail("aé".as_bytes(), 1), "");
        assert_eq!(ttl_note("short", 10), "short");
        assert_eq!(
            ttl_note("0123456789", 4),
            "0123 ... (captured 4 of 10 bytes)"
        );
        assert!(ttl_note("ééé", 3).starts_with("é ..."));
    }
}
