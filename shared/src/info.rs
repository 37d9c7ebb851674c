//! What a page on the same site may learn about the proxy without making a
//! request that fails: `GET /api/fal/proxy/info` (no `x-fal-target-url`)
//! answers `{"key_mode": "user" | "server" | "user-or-server"}`.
//!
//! The playground reads it to decide whether to ask for the visitor's key.
//! It holds no key and nothing else a refusal would not reveal anyway (a
//! `user`-mode proxy says so in its 401), and nothing goes upstream. Every
//! target answers it through the core, so it is the same everywhere.

use crate::config::Config;
use crate::target::TARGET_URL_HEADER;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};

/// The path of the proxy's self-description.
pub const INFO_PATH: &str = "/api/fal/proxy/info";

/// Whether `request` asks for the self-description. With a target URL it is
/// an ordinary proxy request (the path below the route is not used then).
pub(crate) fn is_info_request<B>(request: &Request<B>) -> bool {
    request.method() == Method::GET
        && request.uri().path() == INFO_PATH
        && !request.headers().contains_key(TARGET_URL_HEADER)
}

/// The self-description as JSON, never cached (a redeploy may change it).
pub(crate) fn info_response(config: &Config) -> Response<Bytes> {
    let body = serde_json::json!({ "key_mode": config.key_mode().to_string() });
    let mut response = Response::new(Bytes::from(body.to_string()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decision, Proxy, ProxyError};
    use std::collections::HashMap;

    const SERVER_KEY: &str = "server-id:server-secret";

    fn proxy(pairs: &[(&str, &str)]) -> Proxy {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        let config = Config::from_lookup(|name| map.get(name).map(|v| (*v).to_owned())).unwrap();
        Proxy::new(config, "test")
    }

    fn get(path: &str, headers: &[(&str, &str)]) -> Request<Bytes> {
        let mut builder = Request::get(path).header("host", "localhost:3000");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Bytes::new()).unwrap()
    }

    /// The answer the proxy makes itself, or `None` when it would forward.
    fn answer(proxy: &Proxy, request: Request<Bytes>) -> Option<Response<Bytes>> {
        match proxy.request_filter(request) {
            Decision::Respond(response, _) => Some(response),
            Decision::Forward(..) => None,
        }
    }

    #[test]
    fn says_the_key_mode_and_never_a_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "user"),
            (&[("FAL_KEY", SERVER_KEY)], "server"),
            (
                &[("FAL_KEY", SERVER_KEY), ("FAL_PROXY_KEY_MODE", "user")],
                "user",
            ),
            (
                &[
                    ("FAL_KEY", SERVER_KEY),
                    ("FAL_PROXY_KEY_MODE", "user-or-server"),
                ],
                "user-or-server",
            ),
        ];
        for (pairs, mode) in cases {
            let response = answer(&proxy(pairs), get(INFO_PATH, &[])).unwrap();
            assert_eq!(response.status(), 200, "{pairs:?}");
            assert_eq!(response.headers()["content-type"], "application/json");
            assert_eq!(response.headers()["cache-control"], "no-store");
            let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
            assert_eq!(body, serde_json::json!({ "key_mode": mode }), "{pairs:?}");
            let text = String::from_utf8_lossy(response.body());
            assert!(!text.contains("server-secret"), "{text}");
        }
    }

    #[test]
    fn with_a_target_it_is_an_ordinary_proxy_request() {
        let proxy = proxy(&[("FAL_KEY", SERVER_KEY)]);
        let request = get(
            INFO_PATH,
            &[(
                "x-fal-target-url",
                "https://queue.fal.run/fal-ai/flux/dev/requests/1",
            )],
        );
        assert!(answer(&proxy, request).is_none(), "forwarded");
    }

    #[test]
    fn only_get_on_the_exact_path() {
        let proxy = proxy(&[]);
        let post = Request::post(INFO_PATH).body(Bytes::new()).unwrap();
        let below = get("/api/fal/proxy/info/more", &[]);
        let query = get("/api/fal/proxy/info?x=1", &[]);
        for (request, error) in [
            (post, Some(ProxyError::MissingTargetUrl)),
            (below, Some(ProxyError::MissingTargetUrl)),
            (query, None),
        ] {
            let (status, decision) = match proxy.request_filter(request) {
                Decision::Respond(response, exchange) => (response.status(), exchange.error()),
                Decision::Forward(..) => panic!("nothing to forward"),
            };
            assert_eq!(decision, error);
            if error.is_none() {
                assert_eq!(status, 200);
            }
        }
    }

    #[test]
    fn host_and_origin_checks_still_apply() {
        let hosts = proxy(&[("FAL_PROXY_ALLOWED_HOSTS", "localhost")]);
        let rebound = Request::get(INFO_PATH)
            .header("host", "attacker.example")
            .body(Bytes::new())
            .unwrap();
        assert_eq!(answer(&hosts, rebound).unwrap().status(), 403);

        let cors = proxy(&[("FAL_PROXY_ALLOWED_ORIGINS", "https://app.example")]);
        let refused = get(INFO_PATH, &[("origin", "https://evil.example")]);
        assert_eq!(answer(&cors, refused).unwrap().status(), 403);
        let allowed = answer(&cors, get(INFO_PATH, &[("origin", "https://app.example")])).unwrap();
        assert_eq!(allowed.status(), 200);
        assert_eq!(
            allowed.headers()["access-control-allow-origin"],
            "https://app.example"
        );
    }
}
