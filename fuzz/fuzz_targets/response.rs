//! The header policy, fal to browser, and redirects: whatever fal answers,
//! no hop-by-hop, cookie, origin-wide or foreign CORS header and no header
//! fal names in `Connection` reaches the browser, a `content-length` reaches
//! it only where it frames the body, and a redirect reaches it exactly when
//! the reference model allows its resolved `Location` as a target.

#![no_main]

use arbitrary::Arbitrary;
use fal_proxy_core::{Decision, Proxy};
use fal_proxy_fuzz::{endpoint_model, leaks, proxy, url_model};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

const NAMES: &[&str] = &[
    "location",
    "content-length",
    "transfer-encoding",
    "connection",
    "set-cookie",
    "set-cookie2",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "clear-site-data",
    "strict-transport-security",
    "www-authenticate",
    "x-fal-request-id",
    "x-fal-hop",
    "keep-alive",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    "alt-svc",
    "vary",
    "content-type",
    "cache-control",
    "proxy-connection",
    "content-encoding",
];
const DROPPED: &[&str] = &[
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
    "clear-site-data",
    "strict-transport-security",
    "www-authenticate",
];
const LOCATIONS: &[&str] = &[
    "https://queue.fal.run/fal-ai/flux/requests/1",
    "/fal-ai/flux/requests/1/status",
    "requests/1",
    "../other/x",
    "https://evil.example/",
    "//evil.example/x",
    "https://fal.run@evil.example/",
    "http://fal.run/x",
    "https://rest.fal.ai/tokens/",
    "https://rest.fal.ai/users/me",
    "https://fal.run:8443/",
    "https://fal.run/x#y",
    "?storage_type=fal-cdn-v3",
    "https://FAL.RUN./x",
    "",
    " ",
    "%2e%2e/x",
    "https://fal.run/fal-ai/flux/dev;x",
];
const TARGETS: &[&str] = &[
    "https://queue.fal.run/fal-ai/flux/dev",
    "https://fal.run/fal-ai/flux/dev",
    "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
];
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"];

#[derive(Arbitrary, Debug)]
struct Input {
    endpoint_list: bool,
    cors_origin: bool,
    target: u8,
    method: u8,
    status: u16,
    headers: Vec<(u8, Vec<u8>)>,
    locations: Vec<(u8, Option<String>)>,
}

const ENDPOINTS: &str = "fal-ai/flux/**";
const ORIGIN: (&str, &str) = ("FAL_PROXY_ALLOWED_ORIGINS", "https://app.example");

/// The two configurations, built once: without and with the endpoint list.
static PROXIES: LazyLock<[Proxy; 2]> = LazyLock::new(|| {
    [
        proxy(&[ORIGIN]).expect("an origin"),
        proxy(&[ORIGIN, ("FAL_PROXY_ALLOW_ENDPOINTS", ENDPOINTS)]).expect("an endpoint list"),
    ]
});

fuzz_target!(|input: Input| {
    let endpoints = ENDPOINTS;
    let proxy = &PROXIES[usize::from(input.endpoint_list)];
    let target = TARGETS[usize::from(input.target) % TARGETS.len()];
    let method = METHODS[usize::from(input.method) % METHODS.len()];
    let mut request = http::Request::builder()
        .method(method)
        .uri("/api/fal/proxy")
        .header("x-fal-target-url", target);
    if input.cors_origin {
        request = request.header("origin", "https://app.example");
    }
    let Ok(request) = request.body(()) else {
        return;
    };
    let Decision::Forward(_, exchange) = proxy.request_filter(request) else {
        return;
    };

    let Ok(status) = http::StatusCode::from_u16(input.status % 600) else {
        return;
    };
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    for (pick, value) in input.headers.iter().take(24) {
        let name = NAMES[usize::from(*pick) % NAMES.len()];
        if let Ok(value) = http::HeaderValue::from_bytes(value) {
            response.headers_mut().append(name, value);
        }
    }
    for (pick, raw) in input.locations.iter().take(2) {
        let location = match raw {
            Some(raw) => raw.clone(),
            None => LOCATIONS[usize::from(*pick) % LOCATIONS.len()].to_owned(),
        };
        if let Ok(value) = http::HeaderValue::from_str(&location) {
            response.headers_mut().append("location", value);
        }
    }
    let original = response.headers().clone();
    let named: Vec<String> = original
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();

    // The model of redirects: one non-blank `Location` that, resolved
    // against the target, is a target the proxy would send this method to.
    let locations: Vec<_> = original.get_all("location").iter().collect();
    let redirect_allowed = || {
        let [location] = locations.as_slice() else {
            return false;
        };
        let Ok(location) = location.to_str() else {
            return false;
        };
        if location.trim_matches([' ', '\t']).is_empty() {
            return false;
        }
        let Some(resolved) = url::Url::parse(target)
            .ok()
            .and_then(|base| base.join(location).ok())
        else {
            return false;
        };
        if !url_model::allows(resolved.as_str().as_bytes()) {
            return false;
        }
        let follow = match status.as_u16() {
            303 if method != "HEAD" => "GET",
            301 | 302 if method == "POST" => "GET",
            _ => method,
        };
        let host = resolved.host_str().unwrap_or_default();
        match host {
            "fal.run" | "queue.fal.run" if input.endpoint_list => endpoint_model::allows(
                &[endpoints.to_owned()],
                host == "queue.fal.run",
                follow,
                resolved.path(),
            ),
            "rest.fal.ai" | "rest.alpha.fal.ai" if input.endpoint_list => {
                resolved.path().starts_with("/storage/upload/")
            }
            _ => true,
        }
    };
    let expect_refusal = status.is_redirection() && !locations.is_empty() && !redirect_allowed();

    match proxy.response_filter(&exchange, response) {
        Err(error) => {
            assert!(expect_refusal, "refused {status} {locations:?}: {error:?}");
            assert_eq!(error.error_type(), "upstream_redirect");
        }
        Ok(out) => {
            assert!(
                !expect_refusal,
                "passed {status} {locations:?} from {target}"
            );
            let headers = out.headers();
            for name in DROPPED {
                assert!(headers.get(*name).is_none(), "{name} passed");
            }
            for name in &named {
                let own = name.starts_with("access-control-") || name == "vary";
                assert!(
                    own || headers.get(name.as_str()).is_none(),
                    "{name} (in Connection) passed"
                );
            }
            let mut lengths = headers.get_all("content-length").iter();
            if let Some(length) = lengths.next() {
                assert!(lengths.next().is_none(), "two content-lengths");
                assert!(length.as_bytes().iter().all(u8::is_ascii_digit) && !length.is_empty());
                assert!(
                    original.get("transfer-encoding").is_none(),
                    "content-length beside chunked"
                );
            }
            for (name, value) in headers {
                if name.as_str().starts_with("access-control-") {
                    assert!(input.cors_origin, "{name} without an allowed origin");
                    if name == "access-control-allow-origin" {
                        assert_eq!(value, "https://app.example");
                    }
                }
                assert!(!leaks(value.as_bytes()));
            }
        }
    }
});
