//! The stylesheet and the script, compiled into the binary (the UI works
//! with no network access). Served with the UI's security headers and a
//! short cache lifetime (they change only with the binary).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::shell::secure;

/// `ui/assets/ui.css`.
pub const CSS: &str = include_str!("../assets/ui.css");
/// `ui/assets/ui.js`.
pub const JS: &str = include_str!("../assets/ui.js");

/// A fingerprint of the assets, added to their URLs (`?v=`) so a browser
/// never runs a cached script against a newer agent.
pub fn version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        (CSS, JS).hash(&mut h);
        format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
    })
}

/// `GET /ui/assets/{file}`.
pub(crate) async fn serve(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "ui.css" => (CSS, "text/css; charset=utf-8"),
        "ui.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return secure((StatusCode::NOT_FOUND, "no such asset").into_response()),
    };
    let mut resp = ([(header::CONTENT_TYPE, kind)], body).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    secure(resp)
}
