//! The pages: which one a path names, its query parameters, and the
//! fragment each renders from the catalog (one module per page).

pub(crate) mod kv;
pub(crate) mod nodes;
pub(crate) mod overview;
pub(crate) mod services;
pub(crate) mod templates;

use maud::Markup;
use percent_encoding::percent_decode_str;

use crate::UiState;

/// Longest search text taken from a query string.
const MAX_SEARCH: usize = 256;
/// Highest page number taken from a query string.
const MAX_PAGE: usize = 1_000_000;

/// A page of the UI, named by the path after `/ui/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Page {
    Overview,
    Services,
    Service(String),
    Nodes,
    Node(String),
    /// A KV folder (empty or ending in `/`) or key.
    Kv(String),
    Sql,
    Templates,
}

impl Page {
    /// The page named by `rest`, the raw (percent-encoded) path after
    /// `/ui/`; `None` for anything else (404).
    pub(crate) fn parse(rest: &str) -> Option<Page> {
        let decode = |s: &str| -> Option<String> {
            percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        };
        let (head, tail) = match rest.split_once('/') {
            Some((h, t)) => (h, Some(t)),
            None => (rest, None),
        };
        Some(match (head, tail) {
            ("", None) => Page::Overview,
            ("services", None | Some("")) => Page::Services,
            ("services", Some(name)) => Page::Service(decode(name)?),
            ("nodes", None | Some("")) => Page::Nodes,
            ("nodes", Some(name)) => Page::Node(decode(name)?),
            ("kv", Some(key)) => Page::Kv(decode(key)?),
            ("sql", None) => Page::Sql,
            ("templates", None) => Page::Templates,
            _ => return None,
        })
    }

    /// The navigation entry the page belongs to.
    pub(crate) fn section(&self) -> &'static str {
        match self {
            Page::Overview => "overview",
            Page::Services | Page::Service(_) => "services",
            Page::Nodes | Page::Node(_) => "nodes",
            Page::Kv(_) => "kv",
            Page::Sql => "sql",
            Page::Templates => "templates",
        }
    }

    pub(crate) fn title(&self) -> String {
        match self {
            Page::Overview => "Overview".into(),
            Page::Services => "Services".into(),
            Page::Service(n) => format!("Service {n}"),
            Page::Nodes => "Nodes".into(),
            Page::Node(n) => format!("Node {n}"),
            Page::Kv(k) if k.is_empty() => "Key/Value".into(),
            Page::Kv(k) => format!("Key/Value {k}"),
            Page::Sql => "SQL console".into(),
            Page::Templates => "Templates".into(),
        }
    }
}

/// The query parameters pages read (anything else is ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Query {
    /// Search text.
    pub q: String,
    /// Status filter.
    pub status: String,
    /// Page number, 1-based.
    pub page: usize,
    /// KV value view: `text` or `hex`.
    pub view: String,
}

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Query {
        let mut q = Query {
            page: 1,
            ..Query::default()
        };
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match &*k {
                "q" => {
                    q.q = v
                        .chars()
                        .take(MAX_SEARCH)
                        .collect::<String>()
                        .trim()
                        .to_string()
                }
                "status" => q.status = v.chars().take(16).collect(),
                "page" => q.page = v.parse::<usize>().unwrap_or(1).clamp(1, MAX_PAGE),
                "view" => q.view = v.chars().take(8).collect(),
                _ => {}
            }
        }
        q
    }

    /// The query string of these parameters with another page number.
    pub(crate) fn with_page(&self, page: usize) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if !self.q.is_empty() {
            s.append_pair("q", &self.q);
        }
        if !self.status.is_empty() {
            s.append_pair("status", &self.status);
        }
        if !self.view.is_empty() {
            s.append_pair("view", &self.view);
        }
        if page > 1 {
            s.append_pair("page", &page.to_string());
        }
        s.finish()
    }
}

/// What a fragment's content depends on (what wakes a held request).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Wake {
    pub catalog: bool,
    pub kv: bool,
    pub templates: bool,
    /// Members' SWIM states (suspect does not move the catalog).
    pub members: bool,
    /// Also re-render every second (times and replication figures).
    pub tick: bool,
}

/// A cheap fingerprint of what `page` shows: when it has not moved since
/// the last render, a wake-up renders nothing. `None`: no fingerprint
/// (pages showing times re-render on each wake-up).
pub(crate) fn stamp(st: &UiState, page: &Page) -> Option<(u64, u64)> {
    use corro_catalog::Topic;
    let c = &st.0.catalog;
    Some(match page {
        Page::Services => (c.last_catalog_change(), 0),
        Page::Service(name) => (c.read().topic_index([&Topic::service(name)]), 0),
        Page::Nodes => (c.last_catalog_change(), c.member_generation()),
        Page::Node(name) => (
            c.read().topic_index([&Topic::node(name)]),
            c.member_generation(),
        ),
        Page::Kv(key) if key.is_empty() || key.ends_with('/') => {
            (c.read().topic_index([&Topic::KvPrefix(key.clone())]), 0)
        }
        Page::Kv(key) => (c.read().topic_index([&Topic::KvKey(key.clone())]), 0),
        Page::Overview | Page::Templates | Page::Sql => return None,
    })
}

/// A rendered fragment: its HTML and what it depends on. `None`: no such
/// page (the SQL console has no fragment).
pub(crate) fn render(st: &UiState, page: &Page, q: &Query) -> Option<(Markup, Wake)> {
    let catalog = Wake {
        catalog: true,
        ..Wake::default()
    };
    let with_members = Wake {
        catalog: true,
        members: true,
        ..Wake::default()
    };
    Some(match page {
        Page::Overview => (
            overview::render(st),
            Wake {
                catalog: true,
                kv: true,
                tick: true,
                ..Wake::default()
            },
        ),
        Page::Services => (services::list(st, q), catalog),
        Page::Service(name) => (services::detail(st, name, q), catalog),
        Page::Nodes => (nodes::list(st, q), with_members),
        Page::Node(name) => (nodes::detail(st, name, q), with_members),
        Page::Kv(key) => (
            kv::render(st, key, q),
            Wake {
                kv: true,
                ..Wake::default()
            },
        ),
        Page::Templates => (
            templates::render(st),
            Wake {
                templates: true,
                tick: true,
                ..Wake::default()
            },
        ),
        Page::Sql => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_pages() {
        assert_eq!(Page::parse(""), Some(Page::Overview));
        assert_eq!(Page::parse("services"), Some(Page::Services));
        assert_eq!(
            Page::parse("services/a%2Fb%3Cx"),
            Some(Page::Service("a/b<x".into()))
        );
        assert_eq!(Page::parse("kv/"), Some(Page::Kv(String::new())));
        assert_eq!(Page::parse("kv/a/b%20c/"), Some(Page::Kv("a/b c/".into())));
        assert_eq!(Page::parse("nodes/%ff"), None);
        assert_eq!(Page::parse("elsewhere"), None);
        assert_eq!(Page::parse("sql/x"), None);
    }

    #[test]
    fn query_parameters_are_bounded() {
        let long = "x".repeat(10_000);
        let q = Query::parse(Some(&format!(
            "q={long}&page=99999999999999999999&status=critical"
        )));
        assert_eq!(q.q.len(), MAX_SEARCH);
        assert_eq!(q.page, 1);
        assert_eq!(q.status, "critical");
        let q = Query::parse(Some("page=7&q=a+b&x=1"));
        assert_eq!((q.page, q.q.as_str()), (7, "a b"));
        assert_eq!(q.with_page(2), "q=a+b&page=2");
    }
}
