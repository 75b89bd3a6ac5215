//! Small pieces every page uses: status badges (colour and text and an
//! icon), number and time formatting, URL encoding of names, pagination.

use corro_catalog::{MemberState, Status};
use maud::{Markup, html};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// Characters escaped in a URL path segment (and `/`, for names).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|')
    .add(b'\'')
    .add(b'[')
    .add(b']')
    .add(b'&')
    .add(b'+')
    .add(b';')
    .add(b'=');
const NAME: &AsciiSet = &SEGMENT.add(b'/');

/// A service or node name as one path segment.
pub(crate) fn enc_name(s: &str) -> String {
    utf8_percent_encode(s, NAME).to_string()
}

/// A KV key as a path (its `/` kept).
pub(crate) fn enc_key(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// `12,345`.
pub(crate) fn num(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `under 5 s ago`, `20 s ago`, `3 min ago`: coarse on purpose, so a page
/// showing it changes (and repaints) only when the bucket does.
pub(crate) fn ago(secs: f64) -> String {
    if secs < 5.0 {
        "under 5 s ago".into()
    } else if secs < 60.0 {
        format!("{} s ago", (secs / 10.0).floor() as u64 * 10)
    } else if secs < 7200.0 {
        format!("{} min ago", (secs / 60.0).floor() as u64)
    } else {
        format!("{} h ago", (secs / 3600.0).floor() as u64)
    }
}

/// A duration in coarse buckets (`under 10 ms`, `40 ms`, `300 ms`, `1.2 s`).
pub(crate) fn coarse_ms(secs: f64) -> String {
    let ms = secs * 1000.0;
    if ms < 10.0 {
        "under 10 ms".into()
    } else if ms < 100.0 {
        format!("{} ms", (ms / 10.0).floor() as u64 * 10)
    } else if ms < 1000.0 {
        format!("{} ms", (ms / 100.0).floor() as u64 * 100)
    } else {
        format!("{:.1} s", secs)
    }
}

pub(crate) fn status_icon(s: Status) -> &'static str {
    match s {
        Status::Passing => "✔",
        Status::Warning => "▲",
        Status::Critical => "✖",
        Status::Maintenance => "⏸",
    }
}

/// A status as a coloured badge with an icon and the word.
pub(crate) fn badge(s: Status) -> Markup {
    html! {
        span class={"badge st-" (s.as_str())} {
            span aria-hidden="true" { (status_icon(s)) } " " (s.as_str())
        }
    }
}

/// What membership says of a node, as the Nodes page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Swim {
    Alive,
    Suspect,
    Down,
    /// No member for the node's agent (a node known from another source).
    Unknown,
}

impl Swim {
    pub(crate) fn from_member(s: Option<MemberState>) -> Swim {
        match s {
            Some(MemberState::Alive) => Swim::Alive,
            Some(MemberState::Suspect) => Swim::Suspect,
            Some(MemberState::Down) => Swim::Down,
            None => Swim::Unknown,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Swim::Alive => "alive",
            Swim::Suspect => "suspect",
            Swim::Down => "down",
            Swim::Unknown => "unknown",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Swim> {
        match s {
            "alive" => Some(Swim::Alive),
            "suspect" => Some(Swim::Suspect),
            "down" => Some(Swim::Down),
            "unknown" => Some(Swim::Unknown),
            _ => None,
        }
    }
}

pub(crate) fn swim_badge(s: Swim) -> Markup {
    let (class, icon) = match s {
        Swim::Alive => ("st-passing", "●"),
        Swim::Suspect => ("st-warning", "◐"),
        Swim::Down => ("st-critical", "✖"),
        Swim::Unknown => ("st-unknown", "?"),
    };
    html! {
        span class={"badge " (class)} {
            span aria-hidden="true" { (icon) } " " (s.as_str())
        }
    }
}

/// Rows `[start, end)` of page `page` (1-based) of `per`, and the number
/// of pages.
pub(crate) fn page_range(total: usize, per: usize, page: usize) -> (usize, usize, usize) {
    let pages = total.div_ceil(per).max(1);
    let page = page.clamp(1, pages);
    let start = (page - 1) * per;
    (start, (start + per).min(total), pages)
}

/// Previous/next links; `href(page)` builds each link.
pub(crate) fn pager(
    total: usize,
    per: usize,
    page: usize,
    what: &str,
    href: impl Fn(usize) -> String,
) -> Markup {
    let (start, end, pages) = page_range(total, per, page);
    let page = page.clamp(1, pages);
    html! {
        nav class="pager" aria-label={"Pages of " (what)} {
            span {
                @if total == 0 { "No " (what) }
                @else { "Showing " (num(start + 1)) "–" (num(end)) " of " (num(total)) " " (what) }
            }
            @if pages > 1 {
                @if page > 1 {
                    a href=(href(1)) { "« First" }
                    a href=(href(page - 1)) rel="prev" { "‹ Previous" }
                }
                span { "Page " (page) " of " (num(pages)) }
                @if page < pages {
                    a href=(href(page + 1)) rel="next" { "Next ›" }
                    a href=(href(pages)) { "Last »" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_encodes() {
        assert_eq!(num(0), "0");
        assert_eq!(num(1234567), "1,234,567");
        assert_eq!(num(100), "100");
        assert_eq!(enc_name("a/b c?<"), "a%2Fb%20c%3F%3C");
        assert_eq!(enc_key("app/x y#"), "app/x%20y%23");
        assert_eq!(page_range(101, 50, 3), (100, 101, 3));
        assert_eq!(page_range(0, 50, 9), (0, 0, 1));
        assert_eq!(page_range(10, 50, 0), (0, 10, 1));
        assert_eq!(ago(4.9), "under 5 s ago");
        assert_eq!(ago(27.0), "20 s ago");
        assert_eq!(ago(130.0), "2 min ago");
        assert_eq!(coarse_ms(0.0042), "under 10 ms");
        assert_eq!(coarse_ms(0.047), "40 ms");
        assert_eq!(coarse_ms(0.35), "300 ms");
    }

    #[test]
    fn badges_escape_nothing_they_should_not() {
        let b = badge(Status::Critical).into_string();
        assert!(b.contains("st-critical") && b.contains("critical"), "{b}");
    }
}
