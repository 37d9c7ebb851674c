//! Reference models and helpers for the fuzz targets.
//!
//! Each model restates one rule of the proxy in the plainest code possible
//! (backtracking, no optimisation), so a target can check the real
//! implementation against it: whatever the proxy forwards, the model must
//! allow. The models are written from the README's description of the
//! rules, not from the implementation.

use bytes::Bytes;
use fal_proxy_core::{Config, Decision, Proxy};
use http::Request;

/// The server key every target configures; it must never appear in output.
pub const SERVER_KEY: &str = "fuzz-id:FUZZ-SERVER-SECRET";
/// A visitor's key sent in `x-fal-user-key`; same rule.
pub const USER_KEY: &str = "visitor-id:FUZZ-USER-SECRET";
/// The distinctive parts of both keys.
pub const SECRETS: &[&str] = &["FUZZ-SERVER-SECRET", "FUZZ-USER-SECRET"];

/// A proxy configured from `pairs`, with the server key; `None` when the
/// configuration is refused.
pub fn proxy(pairs: &[(&str, &str)]) -> Option<Proxy> {
    let config = Config::from_lookup(|name| {
        if name == "FAL_KEY" {
            return Some(SERVER_KEY.to_owned());
        }
        pairs
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    })
    .ok()?;
    Some(Proxy::new(config, "fuzz"))
}

/// Whether `haystack` holds either key's secret part.
pub fn leaks(haystack: &[u8]) -> bool {
    SECRETS
        .iter()
        .any(|secret| contains(haystack, secret.as_bytes()))
}

/// Asserts that a `Respond` decision holds no key anywhere.
pub fn assert_no_key_in_answer<B>(decision: &Decision<B>) {
    if let Decision::Respond(response, exchange) = decision {
        assert!(!leaks(response.body()), "key in an answer body");
        for (name, value) in response.headers() {
            assert!(!leaks(value.as_bytes()), "key in answer header {name}");
        }
        assert!(
            !leaks(format!("{exchange:?}").as_bytes()),
            "key in the exchange"
        );
        let line = exchange.log_line(response.status(), std::time::Duration::ZERO, 0);
        assert!(!leaks(line.as_bytes()), "key in the log line");
    }
}

/// A POST to the proxy route with these headers.
pub fn request(headers: &[(&str, &[u8])]) -> Option<Request<Bytes>> {
    let mut builder = Request::post("/api/fal/proxy");
    for (name, value) in headers {
        let value = http::HeaderValue::from_bytes(value).ok()?;
        builder = builder.header(*name, value);
    }
    builder.body(Bytes::from_static(b"{}")).ok()
}

/// The hosts and exact paths of the default URL allow-list.
pub mod url_model {
    /// Whether the proxy may send a request to `raw` under the default
    /// allow-list: exactly one absolute `https` URL of visible ASCII, no
    /// backslash, a plain host (letters, digits, dots, hyphens; optionally
    /// `:443`) that is one of fal's, no user-info, no fragment; on
    /// `rest.fal.ai` and `rest.alpha.fal.ai` one of a few exact paths.
    pub fn allows(raw: &[u8]) -> bool {
        if raw.is_empty()
            || raw.len() > 8 * 1024
            || !raw.iter().all(|b| (0x21..=0x7e).contains(b))
            || raw.contains(&b'\\')
            || raw.contains(&b'#')
        {
            return false;
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            return false;
        };
        if text.len() < 8 || !text[..8].eq_ignore_ascii_case("https://") {
            return false;
        }
        let rest = &text[8..];
        let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
        let host = authority.strip_suffix(":443").unwrap_or(authority);
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return false;
        }
        let host = host.to_ascii_lowercase();
        let Ok(url) = url::Url::parse(text) else {
            return false;
        };
        match host.as_str() {
            "fal.run" | "queue.fal.run" => true,
            "rest.fal.ai" => [
                "/tokens/",
                "/storage/upload/initiate?storage_type=fal-cdn-v3",
                "/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
            ]
            .contains(&&url[url::Position::BeforePath..url::Position::AfterQuery]),
            // The older REST host of client releases up to 1.9.2.
            "rest.alpha.fal.ai" => [
                "/tokens/",
                "/storage/upload/initiate",
                "/storage/upload/initiate?storage_type=fal-cdn-v3",
                "/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
            ]
            .contains(&&url[url::Position::BeforePath..url::Position::AfterQuery]),
            _ => false,
        }
    }
}

/// The endpoint allow-list, restated.
pub mod endpoint_model {
    /// A glob as the README defines it: `*` any run without `/` or `?`,
    /// `**` any run, a trailing `/**` nothing or `/` and anything. With
    /// `prefix`, also true when `subject` runs out first (a longer subject
    /// could still match). Plain backtracking, memoised so that patterns
    /// with several stars stay fast.
    pub fn glob(pattern: &[u8], subject: &[u8], prefix: bool) -> bool {
        let mut memo = std::collections::HashMap::new();
        glob_at(pattern, subject, prefix, &mut memo)
    }

    fn glob_at(
        pattern: &[u8],
        subject: &[u8],
        prefix: bool,
        memo: &mut std::collections::HashMap<(usize, usize), bool>,
    ) -> bool {
        let key = (pattern.len(), subject.len());
        if let Some(&known) = memo.get(&key) {
            return known;
        }
        let matched = if prefix && subject.is_empty() {
            true
        } else {
            match pattern {
                [] => subject.is_empty(),
                b"/**" => subject.is_empty() || subject[0] == b'/',
                [b'*', b'*', rest @ ..] => {
                    (0..=subject.len()).any(|i| glob_at(rest, &subject[i..], prefix, memo))
                }
                [b'*', rest @ ..] => {
                    let mut any = false;
                    for i in 0..=subject.len() {
                        if glob_at(rest, &subject[i..], prefix, memo) {
                            any = true;
                            break;
                        }
                        if i < subject.len() && matches!(subject[i], b'/' | b'?') {
                            break;
                        }
                    }
                    any
                }
                [literal, rest @ ..] => {
                    subject.first() == Some(literal) && glob_at(rest, &subject[1..], prefix, memo)
                }
            }
        };
        memo.insert(key, matched);
        matched
    }

    /// Whether the endpoint list `patterns` (already trimmed of `/`) lets
    /// `method` reach `path` (as sent, percent-encoded) on an app host.
    pub fn allows(patterns: &[String], queue_host: bool, method: &str, path: &str) -> bool {
        let plain = path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~'));
        if !plain || path.contains("//") {
            return false;
        }
        let endpoint = path.strip_prefix('/').unwrap_or(path);
        let names = |endpoint: &str| {
            patterns
                .iter()
                .any(|p| glob(p.as_bytes(), endpoint.as_bytes(), false))
        };
        if names(endpoint) || endpoint.strip_suffix("/stream").is_some_and(names) {
            return true;
        }
        if !queue_host {
            return false;
        }
        let segments: Vec<&str> = endpoint.split('/').collect();
        let [owner, name, "requests", id, rest @ ..] = segments.as_slice() else {
            return false;
        };
        let method_fits = match rest {
            [] | ["status"] | ["status", "stream"] => method == "GET" || method == "HEAD",
            ["cancel"] => method == "PUT",
            _ => false,
        };
        let app = format!("{owner}/{name}");
        let app_slash = format!("{owner}/{name}/");
        method_fits
            && !id.is_empty()
            && patterns.iter().any(|p| {
                glob(p.as_bytes(), app.as_bytes(), false)
                    || glob(p.as_bytes(), app_slash.as_bytes(), true)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint_model::glob;

    #[test]
    fn the_model_glob_agrees_with_the_readme() {
        assert!(glob(b"fal-ai/flux/**", b"fal-ai/flux", false));
        assert!(glob(b"fal-ai/flux/**", b"fal-ai/flux/dev/x", false));
        assert!(!glob(b"fal-ai/flux/**", b"fal-ai/fluxx", false));
        assert!(glob(b"fal-ai/*", b"fal-ai/x", false));
        assert!(!glob(b"fal-ai/*", b"fal-ai/x/y", false));
        assert!(glob(b"fal-ai/*/dev", b"fal-ai/", true));
    }
}

/// The output of `future`, which must be ready at its first poll: the
/// targets' upstreams and key sources answer at once, and the core has no
/// timer of its own, so anything pending is a harness bug.
pub fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("a future the harness drives was pending"),
    }
}

/// Whether `needle` occurs in `haystack`. Compares a window only when its
/// first byte matches: a slice comparison is a `memcmp`, which libFuzzer
/// traces at a cost, and one per window made the checks the hot spot.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else {
        return false;
    };
    haystack
        .windows(needle.len())
        .any(|w| w[0] == first && w == needle)
}
