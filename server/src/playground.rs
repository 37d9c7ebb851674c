//! The playground page: the files of `public/`, embedded in the binary and
//! served at `/` (unless `FAL_PROXY_PLAYGROUND=off`), with the same security
//! headers Vercel (`vercel.json`) and the Worker (`public/_headers`) send.
//! Only `GET` and `HEAD` of these exact paths; everything else goes to the
//! proxy, which answers 404 outside its route.

use bytes::Bytes;
use fal_proxy_core::vars;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response};

/// The page's Content-Security-Policy: its own script and styles only, no
/// inline script, requests to this origin only (the proxy), and images from
/// here, fal's CDN or `data:`/`blob:` URLs (what models return).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: https://fal.media https://*.fal.media; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'";

/// Headers on every file of the page.
const SECURITY_HEADERS: [(HeaderName, &str); 3] = [
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
];

/// Every file of `public/` that is served, by path (the e2e tests check that
/// this covers the folder).
const FILES: [(&str, &str, &[u8]); 4] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../../public/index.html"),
    ),
    (
        "/playground.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../public/playground.js"),
    ),
    (
        "/playground.css",
        "text/css; charset=utf-8",
        include_bytes!("../../public/playground.css"),
    ),
    (
        "/favicon.svg",
        "image/svg+xml",
        include_bytes!("../../public/favicon.svg"),
    ),
];

/// Whether to serve the page: `FAL_PROXY_PLAYGROUND` unset or `on` (the
/// default), `off`; anything else is an error naming the variable.
pub fn enabled(value: Option<&str>) -> Result<bool, String> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "on") => Ok(true),
        Some("off") => Ok(false),
        Some(_) => Err(format!("invalid {}: expected on or off", vars::PLAYGROUND)),
    }
}

/// The page's file for this request, or `None` when it is not one.
pub fn serve<B>(request: &Request<B>) -> Option<Response<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return None;
    }
    let path = request.uri().path();
    let (_, content_type, body) = FILES.iter().find(|(file, ..)| *file == path)?;
    let mut response = Response::new(Bytes::from_static(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Not fingerprinted: the browser revalidates, so a new binary's page is seen at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting() {
        assert_eq!(enabled(None), Ok(true));
        assert_eq!(enabled(Some("")), Ok(true));
        assert_eq!(enabled(Some("On")), Ok(true));
        assert_eq!(enabled(Some(" off ")), Ok(false));
        let error = enabled(Some("no")).unwrap_err();
        assert!(error.contains("FAL_PROXY_PLAYGROUND"), "{error}");
    }

    #[test]
    fn serves_the_files_with_their_headers() {
        let request = |method: &str, path: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap()
        };
        let page = serve(&request("GET", "/")).unwrap();
        assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(page.headers()["x-content-type-options"], "nosniff");
        assert_eq!(page.headers()["referrer-policy"], "no-referrer");
        let csp = page.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self';") && !csp.contains("unsafe"));
        assert!(String::from_utf8_lossy(page.body()).contains("/playground.js"));
        assert!(serve(&request("HEAD", "/playground.js")).is_some());
        for (method, path) in [
            ("POST", "/"),
            ("GET", "/api/fal/proxy"),
            ("GET", "/index.html"),
            ("GET", "/_headers"),
            ("GET", "/../Cargo.toml"),
        ] {
            assert!(serve(&request(method, path)).is_none(), "{method} {path}");
        }
    }
}
