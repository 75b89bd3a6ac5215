//! The KV browser: a folder (its keys and sub-folders, as `?keys&separator=/`
//! lists them, paginated) or one key (flags, indexes, the value as text or
//! hex; values over [`INLINE_MAX`] are loaded on demand by the script).
//! Editing and deleting are forms of the page shell, outside the live part.

use maud::{Markup, html};

use super::Query;
use crate::UiState;
use crate::html::{enc_key, num, page_range, pager};

/// Entries per page of a folder.
const PER_PAGE: usize = 200;
/// Values up to this size are shown in the page; larger ones on demand.
pub(crate) const INLINE_MAX: usize = 64 * 1024;

/// Breadcrumb links for each folder above `key`.
fn crumbs(key: &str) -> Markup {
    let mut parts = Vec::new();
    let mut at = 0;
    for (i, _) in key.match_indices('/') {
        parts.push((&key[at..=i], &key[..=i]));
        at = i + 1;
    }
    html! {
        nav class="crumbs" aria-label="Breadcrumb" {
            a href="/ui/kv/" { "Key/Value" } " / "
            @for (name, path) in parts { a href={"/ui/kv/" (enc_key(path))} { (name.trim_end_matches('/')) } " / " }
        }
    }
}

pub(crate) fn render(st: &UiState, key: &str, q: &Query) -> Markup {
    if key.is_empty() || key.ends_with('/') {
        folder(st, key, q)
    } else {
        value(st, key, q)
    }
}

fn folder(st: &UiState, prefix: &str, q: &Query) -> Markup {
    let entries = st.0.catalog.read().kv_keys(prefix, "/");
    let (start, end, _) = page_range(entries.len(), PER_PAGE, q.page);
    let href = |p: usize| format!("/ui/kv/{}?{}", enc_key(prefix), q.with_page(p));
    html! {
        (crumbs(prefix))
        h1 { @if prefix.is_empty() { "Key/Value" } @else { (prefix) } }
        @if entries.is_empty() {
            p { @if prefix.is_empty() { "The KV store is empty." } @else { "No key under this folder." } }
        } @else {
            (pager(entries.len(), PER_PAGE, q.page, "entries", href))
            ul class="kv-list" {
                @for k in &entries[start..end] {
                    @let name = &k[prefix.len()..];
                    li {
                        @if k.ends_with('/') {
                            span aria-hidden="true" { "📁 " } a href={"/ui/kv/" (enc_key(k))} { (name) } span class="sr" { " (folder)" }
                        } @else {
                            span aria-hidden="true" { "📄 " } a href={"/ui/kv/" (enc_key(k))} { (name) }
                        }
                    }
                }
            }
            @if entries.len() > PER_PAGE { (pager(entries.len(), PER_PAGE, q.page, "entries", href)) }
        }
    }
}

fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 4);
    for (n, chunk) in bytes.chunks(16).enumerate() {
        out.push_str(&format!("{:08x}  ", n * 16));
        for b in chunk {
            out.push_str(&format!("{b:02x} "));
        }
        for _ in chunk.len()..16 {
            out.push_str("   ");
        }
        out.push(' ');
        for b in chunk {
            out.push(if b.is_ascii_graphic() || *b == b' ' {
                *b as char
            } else {
                '.'
            });
        }
        out.push('\n');
    }
    out
}

fn value(st: &UiState, key: &str, q: &Query) -> Markup {
    let entry = st.0.catalog.read().kv_get(key).cloned();
    let Some(e) = entry else {
        return html! {
            (crumbs(key))
            h1 { (key) }
            p { "This key does not exist (it may have been deleted)." }
        };
    };
    let text = std::str::from_utf8(&e.value).ok();
    let hex = q.view == "hex" || (text.is_none() && q.view != "text");
    let page = format!("/ui/kv/{}", enc_key(key));
    html! {
        (crumbs(key))
        h1 { (key) }
        dl class="facts" {
            dt { "Size" } dd { (num(e.value.len())) " bytes" @if text.is_none() { " (not UTF-8)" } }
            dt { "Flags" } dd { (e.flags) }
            dt { "Create index" } dd { (e.create_index) }
            dt { "Modify index" } dd { (e.modify_index) }
        }
        p class="views" {
            "View as: "
            @if hex { a href=(page) { "text" } " · " strong { "hex" } }
            @else { strong { "text" } " · " a href={(page) "?view=hex"} { "hex" } }
        }
        @if e.value.len() > INLINE_MAX {
            p { "The value is " (num(e.value.len())) " bytes. "
                button type="button" data-action="kv-load" data-key=(key) data-view=(if hex { "hex" } else { "text" }) { "Load the value" } }
            pre class="value" id="kv-loaded" hidden {}
        } @else if e.value.is_empty() {
            p class="muted" { "The value is empty." }
        } @else if hex {
            pre class="value hex" { (hex_dump(&e.value)) }
        } @else {
            pre class="value" { (String::from_utf8_lossy(&e.value)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_dump_shows_offsets_bytes_and_text() {
        let d = hex_dump(b"ab\x00\xff<");
        assert_eq!(
            d,
            format!("00000000  61 62 00 ff 3c {} ab..<\n", "   ".repeat(11))
        );
    }

    #[test]
    fn breadcrumbs_link_each_folder() {
        let c = crumbs("a/b c/<x>").into_string();
        assert!(c.contains("href=\"/ui/kv/a/\""), "{c}");
        assert!(c.contains("href=\"/ui/kv/a/b%20c/\""), "{c}");
        assert!(!c.contains("<x>"), "{c}");
    }
}
