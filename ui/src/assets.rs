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
        HeaderValue::from_static("public, max-age=300"),
    );
    secure(resp)
}
