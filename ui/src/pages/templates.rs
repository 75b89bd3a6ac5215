//! Templates: each `[[template]]` block with its source, destination,
//! last render and last error.

use std::time::{SystemTime, UNIX_EPOCH};

use maud::{Markup, html};

use crate::UiState;
use crate::html::{ago, num};

pub(crate) fn render(st: &UiState) -> Markup {
    let rows = st.0.view.templates();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    html! {
        h1 { "Templates" }
        @if rows.is_empty() {
            p { "This agent runs no " code { "[[template]]" } " blocks (see docs/TEMPLATES.md)." }
        } @else {
            div class="table-wrap" {
                table {
                    thead { tr {
                        th scope="col" { "Source" }
                        th scope="col" { "Destination" }
                        th scope="col" { "State" }
                        th scope="col" { "Last render" }
                        th scope="col" { "Renders" }
                    } }
                    tbody {
                        @for t in &rows {
                            tr {
                                td { code { (t.source) } }
                                td { code { (t.destination) } }
                                td {
                                    @if let Some(e) = &t.last_error {
                                        span class="badge st-critical" { span aria-hidden="true" { "✖" } " error" }
                                        pre class="error" { (e) }
                                    } @else if let Some(k) = &t.waiting_for {
                                        span class="badge st-warning" { span aria-hidden="true" { "⏳" } " waiting" }
                                        " for key " code { (k) }
                                    } @else if t.last_render_ms.is_some() {
                                        span class="badge st-passing" { span aria-hidden="true" { "✔" } " rendered" }
                                    } @else {
                                        span class="badge st-unknown" { span aria-hidden="true" { "…" } " not rendered yet" }
                                    }
                                }
                                td {
                                    @match t.last_render_ms {
                                        Some(ms) => { (ago(now.saturating_sub(ms) as f64 / 1000.0)) }
                                        None => span class="muted" { "never" },
                                    }
                                }
                                td { (num(t.renders as usize)) }
                            }
                        }
                    }
                }
            }
        }
    }
}
