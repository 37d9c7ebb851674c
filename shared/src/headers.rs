//! Which headers cross the proxy, in each direction.
//!
//! Upstream, an allow-list: only what fal needs goes, so nothing the browser
//! holds for its own site (cookies, its own `Authorization`) ever reaches
//! fal. Downstream, a deny-list: fal's headers pass except those that belong
//! to one hop, cookies, and CORS headers (the proxy owns CORS).

use crate::key::USER_KEY_HEADER;
use crate::target::TARGET_URL_HEADER;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The header naming the proxy to fal.
pub const CLIENT_PROXY_HEADER: &str = "x-fal-client-proxy";

/// Request headers copied upstream besides the `x-fal-*` family.
const FORWARDED_REQUEST_HEADERS: &[HeaderName] = &[
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::ACCEPT,
    header::USER_AGENT,
];

/// `x-fal-*` request headers that are for the proxy, never for fal.
const PROXY_ONLY_HEADERS: &[&str] = &[TARGET_URL_HEADER, USER_KEY_HEADER, CLIENT_PROXY_HEADER];

/// Response headers that never cross the proxy.
const DROPPED_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "set-cookie",
    "set-cookie2",
    "alt-svc",
    // Origin-wide: they would act on the app's own origin, not fal's
    // (`Clear-Site-Data` could wipe the page's storage, a saved key included).
    // The proxy's own answers (its 401) are not filtered here.
    "clear-site-data",
    "strict-transport-security",
    "www-authenticate",
];

/// The headers sent upstream for a browser request's headers.
pub(crate) fn upstream_request_headers(
    incoming: &HeaderMap,
    authorization: &HeaderValue,
    client_proxy: &HeaderValue,
) -> HeaderMap {
    let hop_by_hop = connection_named(incoming);
    let wanted = |name: &HeaderName| {
        (FORWARDED_REQUEST_HEADERS.contains(name)
            || (name.as_str().starts_with("x-fal-")
                && !PROXY_ONLY_HEADERS.contains(&name.as_str())))
            && !hop_by_hop.contains(name)
    };
    // Room for what goes, and what is added here and later without the map
    // regrowing (a rehash and a copy): `authorization` and
    // `x-fal-client-proxy` here, `accept` by the native upstream. Sized to
    // what goes rather than to what came, the map of a usual request stays
    // small enough for the allocator's fast path.
    let forwarded = incoming.keys().filter(|name| wanted(name)).count();
    let mut out = HeaderMap::with_capacity(forwarded + 3);
    for (name, value) in incoming {
        if wanted(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out.insert(header::AUTHORIZATION, authorization.clone());
    out.insert(
        HeaderName::from_static(CLIENT_PROXY_HEADER),
        client_proxy.clone(),
    );
    out
}

/// The headers a message names as hop-by-hop in its `Connection` header(s).
/// `keep-alive` (the usual one) is left out: no direction lets it through.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|name| !name.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect()
}

/// Strips what must not reach the browser from an upstream response's headers.
pub(crate) fn filter_response_headers(headers: &mut HeaderMap) {
    // Headers the upstream itself names as hop-by-hop in `Connection`.
    for name in connection_named(headers) {
        headers.remove(name);
    }
    // A `content-length` that may not frame the body sent on: beside a
    // `transfer-encoding` (which wins, RFC 9112 6.3), repeated, or not a
    // plain number. The target then frames the body itself.
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let framing = match (lengths.next(), lengths.next()) {
        (Some(length), None) => {
            !length.is_empty() && length.as_bytes().iter().all(u8::is_ascii_digit)
        }
        (None, _) => true,
        (Some(_), Some(_)) => false,
    };
    if !framing || headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    // One pass over the names (most answers have nothing to drop, so nothing
    // is allocated), then the removals.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let name_str = name.as_str();
        if DROPPED_RESPONSE_HEADERS.contains(&name_str) || name_str.starts_with("access-control-") {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::header_map as map;

    #[test]
    fn request_headers_table() {
        let incoming = map(&[
            ("content-type", "application/json"),
            ("content-length", "12"),
            ("accept", "text/event-stream"),
            ("user-agent", "fal-client/1.0"),
            ("x-fal-queue-priority", "low"),
            ("x-fal-request-id", "r1"),
            ("x-fal-runner-hint", "h"),
            ("x-fal-store-io", "1"),
            ("x-fal-object-lifecycle-preference", "{}"),
            ("authorization", "Bearer browser-session"),
            ("cookie", "session=abc"),
            ("x-fal-user-key", "user:key"),
            ("x-fal-target-url", "https://fal.run/x"),
            ("x-fal-client-proxy", "spoofed"),
            ("host", "proxy.example"),
            ("connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("expect", "100-continue"),
            ("origin", "https://app.example"),
            ("referer", "https://app.example/page"),
            ("x-forwarded-for", "1.2.3.4"),
            ("accept-encoding", "gzip"),
        ]);
        let authorization = HeaderValue::from_static("Key server:key");
        let proxy = HeaderValue::from_static("fal-proxy/0 (test)");
        let out = upstream_request_headers(&incoming, &authorization, &proxy);
        let expected = map(&[
            ("content-type", "application/json"),
            ("content-length", "12"),
            ("accept", "text/event-stream"),
            ("user-agent", "fal-client/1.0"),
            ("x-fal-queue-priority", "low"),
            ("x-fal-request-id", "r1"),
            ("x-fal-runner-hint", "h"),
            ("x-fal-store-io", "1"),
            ("x-fal-object-lifecycle-preference", "{}"),
            ("authorization", "Key server:key"),
            ("x-fal-client-proxy", "fal-proxy/0 (test)"),
        ]);
        assert_eq!(out, expected);
    }

    #[test]
    fn response_headers_table() {
        let mut headers = map(&[
            ("content-type", "text/event-stream"),
            ("content-length", "10"),
            ("content-encoding", "gzip"),
            ("x-fal-request-id", "r1"),
            ("x-fal-needs-retry", "0"),
            ("cache-control", "no-cache"),
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("set-cookie", "a=b"),
            ("set-cookie", "c=d"),
            ("access-control-allow-origin", "*"),
            ("access-control-allow-credentials", "true"),
            ("alt-svc", "h3=\":443\""),
            ("upgrade", "h2c"),
        ]);
        filter_response_headers(&mut headers);
        // `content-length` beside `transfer-encoding` does not frame the body.
        let expected = map(&[
            ("content-type", "text/event-stream"),
            ("content-encoding", "gzip"),
            ("x-fal-request-id", "r1"),
            ("x-fal-needs-retry", "0"),
            ("cache-control", "no-cache"),
        ]);
        assert_eq!(headers, expected);
    }
}
