//! Cross-origin access: off unless origins are configured.

use crate::error::ProxyError;
use crate::host::HostHeader;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use std::fmt;

const ALLOW_METHODS: &str = "GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS";
/// Request headers a browser may send besides the `x-fal-*` family.
const ALLOWED_REQUEST_HEADERS: &[&str] = &["content-type", "accept", "authorization"];
const EXPOSE_HEADERS: &str = "x-fal-request-id, x-fal-request-timeout-type, x-fal-error-type, x-fal-needs-retry, x-fal-retryable, ratelimit, ratelimit-policy, retry-after";
const MAX_AGE_SECS: &str = "600";

/// The origins allowed to call the proxy from another origin.
#[derive(Debug, Clone)]
pub(crate) struct Cors {
    any: bool,
    origins: Vec<String>,
}

impl fmt::Display for Cors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.any {
            f.write_str("any origin")
        } else {
            f.write_str(&self.origins.join(","))
        }
    }
}

impl Cors {
    /// `*` allows any origin; otherwise each item is `scheme://host[:port]`.
    pub(crate) fn new(items: &[String]) -> Result<Self, String> {
        let mut cors = Self {
            any: false,
            origins: Vec::new(),
        };
        for item in items {
            if item == "*" {
                cors.any = true;
                continue;
            }
            let url = url::Url::parse(item)
                .map_err(|_| format!("{item:?} is not an origin such as https://app.example"))?;
            let origin = url.origin().ascii_serialization();
            let as_written = item.trim_end_matches('/').to_ascii_lowercase();
            if !url.origin().is_tuple() || origin != as_written {
                return Err(format!(
                    "{item:?} is not an origin such as https://app.example (scheme, host and port only)"
                ));
            }
            cors.origins.push(origin);
        }
        Ok(cors)
    }

    fn allows(&self, origin: &str) -> bool {
        self.any
            || self
                .origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }

    /// Checks the request's `Origin`. `Ok(Some(origin))` when the response
    /// must carry CORS headers for it, `Ok(None)` when none are needed (no
    /// `Origin`, or the proxy's own origin). `scheme` is the request's own
    /// scheme where the target knows it (an absolute request URI).
    pub(crate) fn check(
        &self,
        headers: &HeaderMap,
        scheme: Option<&str>,
    ) -> Result<Option<HeaderValue>, ProxyError> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(None);
        };
        let text = origin.to_str().map_err(|_| ProxyError::OriginNotAllowed)?;
        if self.allows(text) {
            return Ok(Some(origin.clone()));
        }
        if is_same_origin(text, headers, scheme) {
            return Ok(None);
        }
        Err(ProxyError::OriginNotAllowed)
    }

    /// An allowed origin that differs from the refused `origin` only by its
    /// loopback name (`http://localhost:5173` for `http://127.0.0.1:5173`):
    /// to a browser they are different origins, a common local mix-up.
    pub(crate) fn loopback_alias(&self, origin: &str) -> Option<String> {
        let seen = url::Url::parse(origin).ok()?;
        let is_loopback = |url: &url::Url| match url.host() {
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        if !is_loopback(&seen) {
            return None;
        }
        self.origins.iter().find_map(|allowed| {
            let allowed_url = url::Url::parse(allowed).ok()?;
            let alias = is_loopback(&allowed_url)
                && allowed_url.scheme() == seen.scheme()
                && allowed_url.port_or_known_default() == seen.port_or_known_default()
                && allowed_url.host() != seen.host();
            alias.then(|| allowed.clone())
        })
    }

    /// The answer to a preflight from an allowed origin.
    pub(crate) fn preflight(origin: Option<&HeaderValue>, headers: &HeaderMap) -> Response<Bytes> {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let Some(origin) = origin else {
            return response;
        };
        let out = response.headers_mut();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        out.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            allowed_request_headers(headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS)),
        );
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE_SECS),
        );
        out.insert(
            header::VARY,
            HeaderValue::from_static(
                "origin, access-control-request-method, access-control-request-headers",
            ),
        );
        response
    }

    /// Adds the CORS headers of a normal (or error) response.
    pub(crate) fn decorate(origin: &HeaderValue, headers: &mut HeaderMap) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
}

/// The requested headers the proxy accepts, echoed back (browsers do not
/// understand a `x-fal-*` wildcard); the fixed list when none were asked for.
fn allowed_request_headers(requested: Option<&HeaderValue>) -> HeaderValue {
    let requested = requested
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let mut allowed: Vec<String> = ALLOWED_REQUEST_HEADERS
        .iter()
        .map(|&h| h.to_owned())
        .collect();
    for name in requested
        .split(',')
        .map(|name| name.trim().to_ascii_lowercase())
    {
        let acceptable =
            name.starts_with("x-fal-") && HeaderName::from_bytes(name.as_bytes()).is_ok();
        if acceptable && !allowed.contains(&name) {
            allowed.push(name);
        }
    }
    if !allowed
        .iter()
        .any(|name| name == crate::target::TARGET_URL_HEADER)
    {
        allowed.push(crate::target::TARGET_URL_HEADER.to_owned());
    }
    HeaderValue::try_from(allowed.join(", "))
        .unwrap_or_else(|_| HeaderValue::from_static("content-type"))
}

/// What a browser page on another origin needs, for the start-up summary.
pub(crate) fn browser_summary(cors: Option<&Cors>, own_origin: Option<&str>) -> String {
    let here = own_origin.unwrap_or("the proxy's own origin");
    let setting = crate::config::vars::ALLOWED_ORIGINS;
    match cors {
        None => format!(
            "browsers: CORS is off, so only pages served from {here} can call the proxy; a page on another origin (such as a dev server on http://localhost:5173) needs {setting}=<that origin>, or its dev server's proxy option (README: Local development)"
        ),
        Some(cors) if cors.any => format!(
            "browsers: CORS is on for any origin ({setting}=*): every web page can use this proxy, and its key"
        ),
        Some(cors) => format!(
            "browsers: CORS is on for {} (exact scheme, host and port: localhost and 127.0.0.1 are different origins); pages served from {here} need nothing",
            cors.origins.join(", ")
        ),
    }
}

/// A browser request from a page served by the proxy's own host: an `Origin`
/// exactly as a browser serializes one (`http(s)://host[:port]`: no path,
/// user-info, query, fragment or default port) whose host and effective port
/// are the strictly parsed `Host`'s, and whose scheme is the request's where
/// the target knows it. A target that does not (the native server, which may
/// sit behind a TLS terminator) accepts either scheme on the matching port.
pub(crate) fn is_same_origin(origin: &str, headers: &HeaderMap, scheme: Option<&str>) -> bool {
    let Some(host) = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(HostHeader::parse)
    else {
        return false;
    };
    let Ok(url) = url::Url::parse(origin) else {
        return false;
    };
    if !matches!(url.scheme(), "http" | "https")
        || !url
            .origin()
            .ascii_serialization()
            .eq_ignore_ascii_case(origin)
    {
        return false;
    }
    if scheme.is_some_and(|scheme| !scheme.eq_ignore_ascii_case(url.scheme())) {
        return false;
    }
    let Some(origin_host) = url.host_str() else {
        return false;
    };
    let origin_host = origin_host.trim_start_matches('[').trim_end_matches(']');
    // A `Host` without a port means the default port of the request's scheme.
    let default_port = if scheme.unwrap_or(url.scheme()).eq_ignore_ascii_case("http") {
        80
    } else {
        443
    };
    let host_port = host.port.or(Some(default_port));
    origin_host.eq_ignore_ascii_case(host.name) && url.port_or_known_default() == host_port
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::header_map as headers;

    fn cors(items: &[&str]) -> Cors {
        Cors::new(&items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn origin_check_table() {
        let list = cors(&["https://app.example", "http://localhost:5173"]);
        let any = cors(&["*"]);
        let cases: &[(&Cors, &[(&str, &str)], Result<Option<&str>, ProxyError>)] = &[
            (&list, &[], Ok(None)),
            (
                &list,
                &[("origin", "https://app.example")],
                Ok(Some("https://app.example")),
            ),
            (
                &list,
                &[("origin", "https://APP.example")],
                Ok(Some("https://APP.example")),
            ),
            (
                &list,
                &[("origin", "http://localhost:5173")],
                Ok(Some("http://localhost:5173")),
            ),
            (
                &list,
                &[("origin", "http://app.example")],
                Err(ProxyError::OriginNotAllowed),
            ),
            (
                &list,
                &[("origin", "https://app.example:8443")],
                Err(ProxyError::OriginNotAllowed),
            ),
            (
                &list,
                &[("origin", "https://app.example.evil")],
                Err(ProxyError::OriginNotAllowed),
            ),
            (
                &list,
                &[("origin", "null")],
                Err(ProxyError::OriginNotAllowed),
            ),
            (
                &list,
                &[
                    ("origin", "https://proxy.example"),
                    ("host", "proxy.example"),
                ],
                Ok(None),
            ),
            (
                &list,
                &[
                    ("origin", "http://127.0.0.1:3000"),
                    ("host", "127.0.0.1:3000"),
                ],
                Ok(None),
            ),
            (
                &list,
                &[
                    ("origin", "http://127.0.0.1:3001"),
                    ("host", "127.0.0.1:3000"),
                ],
                Err(ProxyError::OriginNotAllowed),
            ),
            (
                &any,
                &[("origin", "https://whoever.example")],
                Ok(Some("https://whoever.example")),
            ),
        ];
        for (cors, pairs, expected) in cases {
            let got = cors.check(&headers(pairs), None);
            let got = got
                .as_ref()
                .map(|o| o.as_ref().map(|v| v.to_str().unwrap()));
            assert_eq!(got, expected.as_ref().map(|o| o.as_deref()), "{pairs:?}");
        }
    }

    #[test]
    fn loopback_aliases_are_spotted() {
        let list = cors(&["http://localhost:5173", "https://app.example"]);
        assert_eq!(
            list.loopback_alias("http://127.0.0.1:5173").as_deref(),
            Some("http://localhost:5173")
        );
        assert_eq!(
            list.loopback_alias("http://[::1]:5173").as_deref(),
            Some("http://localhost:5173")
        );
        for unrelated in [
            "http://127.0.0.1:3000",
            "https://127.0.0.1:5173",
            "http://localhost:5173",
            "http://app.example",
            "null",
        ] {
            assert_eq!(list.loopback_alias(unrelated), None, "{unrelated}");
        }
    }

    #[test]
    fn browser_summary_says_what_a_page_needs() {
        let off = browser_summary(None, Some("http://127.0.0.1:3000"));
        assert!(off.contains("CORS is off"), "{off}");
        assert!(off.contains("http://127.0.0.1:3000"), "{off}");
        assert!(off.contains("FAL_PROXY_ALLOWED_ORIGINS"), "{off}");
        let on = browser_summary(Some(&cors(&["http://localhost:5173"])), None);
        assert!(on.contains("CORS is on for http://localhost:5173"), "{on}");
        let any = browser_summary(Some(&cors(&["*"])), None);
        assert!(any.contains("any origin"), "{any}");
        let config = crate::Config::from_lookup(|_| None).unwrap();
        let with_playground = config.browser_summary(None, Some("http://127.0.0.1:3000/"));
        assert!(
            with_playground.ends_with("; playground: http://127.0.0.1:3000/"),
            "{with_playground}"
        );
    }

    #[test]
    fn bad_origins_are_config_errors() {
        for bad in [
            "app.example",
            "https://app.example/x",
            "https://app.example?x",
            "mailto:x@y",
            "https://",
        ] {
            assert!(Cors::new(&[bad.to_owned()]).is_err(), "{bad}");
        }
        assert!(Cors::new(&["https://app.example/".to_owned()]).is_ok());
    }

    #[test]
    fn preflight_echoes_allowed_headers_only() {
        let origin = HeaderValue::from_static("https://app.example");
        let request = headers(&[(
            "access-control-request-headers",
            "Content-Type, X-Fal-Target-Url, x-fal-queue-priority, cookie, x-evil",
        )]);
        let response = Cors::preflight(Some(&origin), &request);
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let h = response.headers();
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        let allowed = h[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap();
        for name in [
            "content-type",
            "x-fal-target-url",
            "x-fal-queue-priority",
            "authorization",
        ] {
            assert!(
                allowed.split(", ").any(|a| a == name),
                "{name} in {allowed}"
            );
        }
        assert!(
            !allowed.contains("cookie") && !allowed.contains("x-evil"),
            "{allowed}"
        );
        assert!(
            h[header::ACCESS_CONTROL_ALLOW_METHODS]
                .to_str()
                .unwrap()
                .contains("PUT")
        );
        let bare = Cors::preflight(None, &request);
        assert!(bare.headers().is_empty());
    }
}
