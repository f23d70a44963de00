//! The store's web page: a few fixed files compiled into the binary and served at `GET /` and
//! `GET /ui/…`, without a token (the page holds no data; it asks the query API with the token the
//! person types in). Not here: anything the page shows, which comes from `/api/` like any
//! client's answers.
//!
//! Only the paths in [`ASSETS`] exist; nothing from a request ever names a file on disk. Every
//! answer carries `Content-Security-Policy: default-src 'self'` (no script, style, image or
//! connection from anywhere else, no inline script) and `X-Content-Type-Options: nosniff`.

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::api::ApiBody;

/// The policy every page answer carries: the page loads and talks to this origin only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'";

/// One file of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// Every file of the page, by the path it is served at.
pub const ASSETS: &[Asset] = &[
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_str!("../web/index.html") },
    Asset { path: "/ui/app.js", content_type: "text/javascript; charset=utf-8", body: include_str!("../web/app.js") },
    Asset { path: "/ui/app.css", content_type: "text/css; charset=utf-8", body: include_str!("../web/app.css") },
    Asset { path: "/ui/icon.svg", content_type: "image/svg+xml", body: include_str!("../web/icon.svg") },
];

/// The asset served at `path`, if any.
pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// The answer for `asset` to a GET or HEAD (`None` for another method, which the caller
/// refuses with 405).
pub fn respond(asset: &Asset, method: &Method) -> Option<Response<ApiBody>> {
    let body = match *method {
        Method::GET => ApiBody::full(asset.body),
        Method::HEAD => ApiBody::full(""),
        _ => return None,
    };
    let mut r = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, asset.content_type)
        // Small files: a reload always gets the page this binary serves.
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .body(body)
        .expect("static headers are valid");
    if *method == Method::HEAD {
        r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(asset.body.len()));
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_paths_are_assets() {
        assert_eq!(find("/").unwrap().content_type, "text/html; charset=utf-8");
        assert!(find("/ui/app.js").is_some());
        assert!(find("/ui/app.css").is_some());
        for path in ["/ui/", "/ui/../Cargo.toml", "/ui/app.js/", "/index.html", "/ui/%2e%2e/x", "//"] {
            assert!(find(path).is_none(), "{path}");
        }
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for a in ASSETS {
            // (The SVG namespace is a name in app.js, not a place to load from.)
            for needle in
                ["https://", "src=\"http", "href=\"http", "url(", "@import", "<script>", " onclick=", "style=\""]
            {
                assert!(!a.body.contains(needle), "{} contains {needle:?}", a.path);
            }
        }
        let html = find("/").unwrap().body;
        assert!(html.contains("src=\"/ui/app.js\""));
        assert!(html.contains("href=\"/ui/app.css\""));
    }

    #[test]
    fn answers_carry_the_security_headers() {
        let r = respond(find("/").unwrap(), &Method::GET).unwrap();
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], "default-src 'self'");
        assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(respond(find("/").unwrap(), &Method::POST).is_none());
    }
}
