//! The target check: which fal URL a request may reach.
//!
//! The `x-fal-target-url` header is parsed with the WHATWG URL parser, and
//! what is checked is exactly what is sent: the parsed, re-serialised URL.
//! Before parsing, the raw authority must be plain `host` or `host:443`
//! made of letters, digits, dots and hyphens, so user-info, percent-encoded
//! or IDN hosts, IP literals and other ports never get as far as a match.

use crate::error::ProxyError;
use crate::pattern::Glob;
use http::HeaderMap;

/// The request header that carries the real fal URL.
pub const TARGET_URL_HEADER: &str = "x-fal-target-url";

/// [`TARGET_URL_HEADER`] as a header name, looked up without parsing it.
const TARGET_URL: http::HeaderName = http::HeaderName::from_static(TARGET_URL_HEADER);

/// The longest target URL accepted, in bytes.
const MAX_TARGET_URL_LEN: usize = 8 * 1024;

/// The allow-list patterns every deployment has: exactly the forms released
/// `@fal-ai/client` 1.x versions send through a proxy, and nothing more.
pub(crate) const DEFAULT_ALLOW_URLS: &[&str] = &[
    "fal.run/**",
    "queue.fal.run/**",
    // 1.9.3 and later.
    "rest.fal.ai/tokens/",
    "rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
    "rest.fal.ai/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
    // 1.0.2 to 1.9.2 send the token and uploads to the older REST host;
    // 1.0.2 to 1.1.2 initiate without a storage type and have no multipart.
    "rest.alpha.fal.ai/tokens/",
    "rest.alpha.fal.ai/storage/upload/initiate",
    "rest.alpha.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
    "rest.alpha.fal.ai/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
];

/// Hosts whose paths name fal apps (`owner/name/...`).
const APP_HOSTS: &[&str] = &["fal.run", "queue.fal.run"];

/// fal's REST hosts (tokens, storage): the current one and the one releases
/// up to 1.9.2 use. An endpoint list treats both alike.
const REST_HOSTS: &[&str] = &["rest.fal.ai", "rest.alpha.fal.ai"];

/// A host name as written: letters, digits, dots and hyphens only, so no
/// user-info, port, percent-encoding, IP-literal brackets or non-ASCII.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-'))
}

/// Whether an app host's path is made only of letters, digits, `-._~` and
/// `/`, with no empty segment: what fal app ids and request ids use. Anything else (`;` as in
/// `..;/`, any percent sequence such as `%2F`, `%2E`, `%25`, `%c0%ae` or
/// `%u002e`) could mean something else to a router behind fal than it does
/// to the endpoint allow-list, so it is refused while a list is in force.
pub(crate) fn is_plain_app_path(path: &str) -> bool {
    !path.contains("//")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~'))
}

/// A validated target URL: its WHATWG serialisation (what is checked is
/// what is sent) and where its host and query start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    serialization: String,
    /// End of the host, where the path starts (after `https://host`).
    host_end: usize,
    /// Where `?query` starts, or the end.
    query_start: usize,
}

/// Where every target URL starts.
const HTTPS: &str = "https://";

impl Target {
    /// Reads and validates the `x-fal-target-url` header (syntax only; the
    /// allow-list is checked by [`UrlAllowList::check`]).
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ProxyError> {
        let mut values = headers.get_all(&TARGET_URL).iter();
        let value = values.next().ok_or(ProxyError::MissingTargetUrl)?;
        if values.next().is_some() {
            return Err(ProxyError::InvalidTargetUrl);
        }
        Self::parse(value.as_bytes())
    }

    /// Validates a raw target URL.
    pub fn parse(raw: &[u8]) -> Result<Self, ProxyError> {
        let raw = Self::visible_ascii(raw)?;
        match Self::already_canonical(raw) {
            Some(target) => Ok(target),
            None => Self::parse_whatwg(raw),
        }
    }

    /// [`Target::parse`] without its fast path: the fuzz target's reference.
    pub(crate) fn parse_without_fast_path(raw: &[u8]) -> Result<Self, ProxyError> {
        Self::parse_whatwg(Self::visible_ascii(raw)?)
    }

    /// A raw target of visible ASCII, within the length limit, without a backslash.
    fn visible_ascii(raw: &[u8]) -> Result<&str, ProxyError> {
        if raw.is_empty()
            || raw.len() > MAX_TARGET_URL_LEN
            || !raw.iter().all(|byte| (0x21..=0x7e).contains(byte))
            || raw.contains(&b'\\')
        {
            return Err(ProxyError::InvalidTargetUrl);
        }
        // Visible ASCII only, checked above.
        std::str::from_utf8(raw).map_err(|_| ProxyError::InvalidTargetUrl)
    }

    /// The fast path: a URL the WHATWG parser would leave exactly as it is
    /// (what every released client sends), recognised without parsing it.
    /// `https://`, a host of lower-case letters, digits and hyphens in
    /// non-empty dot-separated labels whose last is letters only (so never
    /// an IPv4 address) and none of which is an `xn--` label, then a path of
    /// unreserved characters and `/` with no `.` or `..` segment, then
    /// optionally `?` and a query of visible ASCII other than what the
    /// parser would percent-encode (`"'<>`) or cut (`#`). Anything else,
    /// valid or not, takes [`Target::parse_whatwg`]. The fuzz target
    /// `target_url` checks that both give the same answer on every input.
    fn already_canonical(raw: &str) -> Option<Self> {
        // One pass over the bytes (this runs on every request).
        let bytes = raw.as_bytes();
        let rest = bytes.strip_prefix(HTTPS.as_bytes())?;
        let mut label_start = 0;
        let mut letters_only = true;
        let mut host_len = None;
        for (i, &byte) in rest.iter().enumerate() {
            match byte {
                b'a'..=b'z' => {}
                b'0'..=b'9' | b'-' => letters_only = false,
                b'.' | b'/' => {
                    let label = &rest[label_start..i];
                    if label.is_empty() || label.starts_with(b"xn--") {
                        return None;
                    }
                    if byte == b'/' {
                        // The last label: letters only, so never a number.
                        if !letters_only {
                            return None;
                        }
                        host_len = Some(i);
                        break;
                    }
                    label_start = i + 1;
                    letters_only = true;
                }
                _ => return None,
            }
        }
        let host_end = HTTPS.len() + host_len?;
        let mut query_start = bytes.len();
        let path_start = host_end + 1;
        let mut segment_start = path_start;
        for i in path_start..=bytes.len() {
            match bytes.get(i) {
                next @ (None | Some(b'/' | b'?')) => {
                    let segment = &bytes[segment_start..i];
                    if segment == b"." || segment == b".." {
                        return None;
                    }
                    if next == Some(&b'?') {
                        query_start = i;
                        break;
                    }
                    segment_start = i + 1;
                }
                Some(byte)
                    if byte.is_ascii_alphanumeric()
                        || matches!(byte, b'-' | b'.' | b'_' | b'~') => {}
                Some(_) => return None,
            }
        }
        if bytes[query_start..]
            .iter()
            .any(|byte| matches!(byte, b'"' | b'\'' | b'<' | b'>' | b'#'))
        {
            return None;
        }
        Some(Self {
            serialization: raw.to_owned(),
            host_end,
            query_start,
        })
    }

    /// The WHATWG parse, and the checks on what it made of the URL.
    fn parse_whatwg(raw: &str) -> Result<Self, ProxyError> {
        let url = url::Url::parse(raw).map_err(|_| ProxyError::InvalidTargetUrl)?;
        if url.cannot_be_a_base() || url.fragment().is_some() {
            return Err(ProxyError::InvalidTargetUrl);
        }
        if url.scheme() != "https" {
            return Err(ProxyError::TargetNotAllowed);
        }
        // The authority as the client wrote it, between `//` and the path.
        let after_scheme = raw
            .get("https:".len()..)
            .and_then(|rest| rest.strip_prefix("//"))
            .ok_or(ProxyError::InvalidTargetUrl)?;
        let authority_end = after_scheme
            .find(['/', '?', '#'])
            .unwrap_or(after_scheme.len());
        let authority = &after_scheme[..authority_end];
        let host = authority.strip_suffix(":443").unwrap_or(authority);
        if !is_plain_host(host) || url.port().is_some() || !url.username().is_empty() {
            return Err(ProxyError::TargetNotAllowed);
        }
        // Dotted numbers parse as IPv4 addresses: never a fal host.
        if !matches!(url.host(), Some(url::Host::Domain(_))) {
            return Err(ProxyError::TargetNotAllowed);
        }
        let host_end = url[..url::Position::BeforePath].len();
        let query_start = url[..url::Position::AfterPath].len();
        let serialization = String::from(url);
        // `https://host`, nothing between (no user-info, no port: checked).
        if !serialization.is_char_boundary(host_end) || host_end <= HTTPS.len() {
            return Err(ProxyError::InvalidTargetUrl);
        }
        Ok(Self {
            serialization,
            host_end,
            query_start,
        })
    }

    /// The lower-case host.
    pub fn host(&self) -> &str {
        &self.serialization[HTTPS.len()..self.host_end]
    }

    /// The path, percent-encoded, starting with `/`.
    pub fn path(&self) -> &str {
        &self.serialization[self.host_end..self.query_start]
    }

    /// The path and, when there is one, `?` and the query.
    pub fn path_and_query(&self) -> &str {
        &self.serialization[self.host_end..]
    }

    /// The URL as it is sent upstream (without an upstream override).
    pub fn as_str(&self) -> &str {
        &self.serialization
    }
}

/// One `host/path?query` pattern of the URL allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UrlPattern {
    host: String,
    rest: Glob,
}

impl UrlPattern {
    /// Parses `host/path-glob[?query-glob]`, with an optional `https://`.
    pub(crate) fn parse(pattern: &str) -> Result<Self, String> {
        let pattern = pattern.strip_prefix("https://").unwrap_or(pattern);
        let (host, rest) = match pattern.find(['/', '?']) {
            Some(index) => pattern.split_at(index),
            None => (pattern, "/"),
        };
        if !is_plain_host(host) {
            return Err(format!(
                "{pattern:?} must start with a plain host name such as fal.run (no scheme other than https://, no port, no wildcard in the host)"
            ));
        }
        let rest = if rest.starts_with('?') {
            format!("/{rest}")
        } else {
            rest.to_owned()
        };
        Ok(Self {
            host: host.to_ascii_lowercase(),
            rest: Glob::new(&rest),
        })
    }

    fn matches(&self, target: &Target) -> bool {
        self.host == target.host() && self.rest.matches(target.path_and_query())
    }
}

/// The URL allow-list: the defaults plus the operator's additions.
#[derive(Debug, Clone)]
pub(crate) struct UrlAllowList {
    patterns: Vec<UrlPattern>,
}

impl UrlAllowList {
    pub(crate) fn new(patterns: Vec<UrlPattern>) -> Self {
        Self { patterns }
    }

    pub(crate) fn check(&self, target: &Target) -> Result<(), ProxyError> {
        if self.patterns.iter().any(|pattern| pattern.matches(target)) {
            Ok(())
        } else {
            Err(ProxyError::TargetNotAllowed)
        }
    }
}

/// The endpoint allow-list: which fal apps may run through this proxy.
#[derive(Debug, Clone)]
pub(crate) struct EndpointAllowList {
    patterns: Vec<Glob>,
}

impl EndpointAllowList {
    pub(crate) fn new(patterns: Vec<Glob>) -> Self {
        Self { patterns }
    }

    pub(crate) fn patterns(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(Glob::as_str)
    }

    /// Applies to app hosts, whatever the method. Queue requests of an
    /// allowed endpoint's app (`owner/name/requests/<id>`, its `/status`,
    /// `/status/stream` and `/cancel`) pass, so status, result and cancel keep
    /// working. On the REST hosts only storage uploads pass (they name no app);
    /// the token endpoint is refused, since the proxy cannot see which apps a
    /// token would be minted for. Operator-added URLs on other hosts name no
    /// app and pass. A path with anything but letters, digits, `-._~` and `/`
    /// is refused (see [`is_plain_app_path`]).
    pub(crate) fn check(&self, method: &http::Method, target: &Target) -> Result<(), ProxyError> {
        let host = target.host();
        if REST_HOSTS.contains(&host) {
            return if target.path().starts_with("/storage/upload/") {
                Ok(())
            } else {
                Err(ProxyError::EndpointNotAllowed)
            };
        }
        if !APP_HOSTS.contains(&host) {
            return Ok(());
        }
        let path = target.path();
        if !is_plain_app_path(path) {
            return Err(ProxyError::EndpointNotAllowed);
        }
        let endpoint = path.trim_start_matches('/');
        let streamless = endpoint.strip_suffix("/stream");
        let endpoint_allowed = self.patterns.iter().any(|pattern| {
            pattern.matches(endpoint) || streamless.is_some_and(|e| pattern.matches(e))
        });
        if endpoint_allowed {
            return Ok(());
        }
        if host == "queue.fal.run" && self.is_queue_request_of_allowed_app(method, endpoint) {
            return Ok(());
        }
        Err(ProxyError::EndpointNotAllowed)
    }

    /// `owner/name/requests/<id>` (GET: result), `.../status` and
    /// `.../status/stream` (GET), `.../cancel` (PUT), for an allowed app.
    fn is_queue_request_of_allowed_app(&self, method: &http::Method, endpoint: &str) -> bool {
        let segments: Vec<&str> = endpoint.split('/').collect();
        let [owner, name, "requests", id, rest @ ..] = segments.as_slice() else {
            return false;
        };
        let known = match rest {
            [] | ["status"] | ["status", "stream"] => {
                method == http::Method::GET || method == http::Method::HEAD
            }
            ["cancel"] => method == http::Method::PUT,
            _ => false,
        };
        known
            && !id.is_empty()
            && self
                .patterns
                .iter()
                .any(|pattern| pattern.could_match_app(owner, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn default_list() -> UrlAllowList {
        UrlAllowList::new(
            DEFAULT_ALLOW_URLS
                .iter()
                .map(|p| UrlPattern::parse(p).unwrap())
                .collect(),
        )
    }

    fn check(raw: &str) -> Result<(), ProxyError> {
        let target = Target::parse(raw.as_bytes())?;
        default_list().check(&target)
    }

    #[test]
    fn default_allow_list_table() {
        use ProxyError::{InvalidTargetUrl as Bad, TargetNotAllowed as No};
        let cases: &[(&str, Result<(), ProxyError>)] = &[
            // fal's own URLs, as the client sends them
            ("https://fal.run/fal-ai/flux/dev", Ok(())),
            ("https://fal.run/fal-ai/fast-sdxl/stream", Ok(())),
            ("https://queue.fal.run/fal-ai/flux/dev", Ok(())),
            (
                "https://queue.fal.run/fal-ai/flux/dev?fal_webhook=https%3A%2F%2Fx.example",
                Ok(()),
            ),
            (
                "https://queue.fal.run/fal-ai/flux/requests/abc/status?logs=1",
                Ok(()),
            ),
            (
                "https://queue.fal.run/fal-ai/flux/requests/abc/status/stream",
                Ok(()),
            ),
            ("https://queue.fal.run/fal-ai/flux/requests/abc", Ok(())),
            (
                "https://queue.fal.run/fal-ai/flux/requests/abc/cancel",
                Ok(()),
            ),
            ("https://rest.fal.ai/tokens/", Ok(())),
            (
                "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
                Ok(()),
            ),
            (
                "https://rest.fal.ai/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
                Ok(()),
            ),
            ("https://fal.run", Ok(())),
            ("https://fal.run/", Ok(())),
            ("https://fal.run:443/fal-ai/flux", Ok(())),
            // case-insensitive host, exact comparison
            ("https://FAL.RUN/fal-ai/flux", Ok(())),
            ("https://Queue.Fal.Run/fal-ai/flux", Ok(())),
            ("HTTPS://fal.run/fal-ai/flux", Ok(())),
            // other fal hosts and paths
            ("https://api.fal.ai/v1/models", Err(No)),
            ("https://rest.fal.ai/users/me", Err(No)),
            ("https://rest.fal.ai/tokens", Err(No)),
            ("https://rest.fal.ai/tokens/x", Err(No)),
            ("https://rest.fal.ai/tokens/?x=1", Err(No)),
            ("https://rest.fal.ai/storage/upload/initiate", Err(No)),
            (
                "https://rest.fal.ai/storage/upload/initiate?storage_type=gcs",
                Err(No),
            ),
            (
                "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3&x=1",
                Err(No),
            ),
            (
                "https://rest.fal.ai/storage/upload/complete-multipart",
                Err(No),
            ),
            ("https://ws.fal.run/fal-ai/flux", Err(No)),
            ("https://gateway.fal.ai/x", Err(No)),
            ("https://fal.ai/models", Err(No)),
            ("https://v3.fal.media/files/x.png", Err(No)),
            // look-alikes
            ("https://fal.run.evil.example/fal-ai/flux", Err(No)),
            ("https://evilfal.run/fal-ai/flux", Err(No)),
            ("https://evil-fal.run/fal-ai/flux", Err(No)),
            ("https://fal.run./fal-ai/flux", Err(No)),
            ("https://queue.fal.run./fal-ai/flux", Err(No)),
            ("https://xn--fal-9na.run/fal-ai/flux", Err(No)),
            ("https://fal%2Erun/fal-ai/flux", Err(No)),
            ("https://%66al.run/fal-ai/flux", Err(No)),
            ("https://rest.fal.ai.evil.example/tokens/", Err(No)),
            // the older REST host, as releases up to 1.9.2 send it
            ("https://rest.alpha.fal.ai/tokens/", Ok(())),
            ("https://REST.Alpha.FAL.ai/tokens/", Ok(())),
            ("https://rest.alpha.fal.ai:443/tokens/", Ok(())),
            ("https://rest.alpha.fal.ai/storage/upload/initiate", Ok(())),
            (
                "https://rest.alpha.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
                Ok(()),
            ),
            (
                "https://rest.alpha.fal.ai/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
                Ok(()),
            ),
            // ... and nothing else there
            ("https://rest.alpha.fal.ai/", Err(No)),
            ("https://rest.alpha.fal.ai/users/me", Err(No)),
            ("https://rest.alpha.fal.ai/tokens", Err(No)),
            ("https://rest.alpha.fal.ai/tokens/x", Err(No)),
            ("https://rest.alpha.fal.ai/tokens/?x=1", Err(No)),
            ("https://rest.alpha.fal.ai//tokens/", Err(No)),
            ("https://rest.alpha.fal.ai/Tokens/", Err(No)),
            (
                "https://rest.alpha.fal.ai/storage/upload/initiate?",
                Err(No),
            ),
            (
                "https://rest.alpha.fal.ai/storage/upload/initiate?storage_type=gcs",
                Err(No),
            ),
            (
                "https://rest.alpha.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3&x=1",
                Err(No),
            ),
            (
                "https://rest.alpha.fal.ai/storage/upload/initiate-multipart",
                Err(No),
            ),
            (
                "https://rest.alpha.fal.ai/storage/upload/initiate/x",
                Err(No),
            ),
            (
                "https://rest.alpha.fal.ai/storage/upload/complete-multipart",
                Err(No),
            ),
            ("https://rest.alpha.fal.ai/storage/upload/", Err(No)),
            ("https://rest.alpha.fal.ai/applications/x", Err(No)),
            // the form without a storage type is only the old host's
            ("https://rest.fal.ai/storage/upload/initiate", Err(No)),
            // other alpha hosts and look-alikes of the old host
            ("https://api.alpha.fal.ai/tokens/", Err(No)),
            ("https://alpha.fal.ai/tokens/", Err(No)),
            ("https://rest.alpha.fal.ai.evil.example/tokens/", Err(No)),
            ("https://rest.alpha.fal.ai./tokens/", Err(No)),
            ("https://evilrest.alpha.fal.ai/tokens/", Err(No)),
            ("https://x.rest.alpha.fal.ai/tokens/", Err(No)),
            ("https://rest-alpha.fal.ai/tokens/", Err(No)),
            (
                "https://rest.alpha.fal.ai.evil.example/storage/upload/initiate",
                Err(No),
            ),
            ("https://rest%2Ealpha.fal.ai/tokens/", Err(No)),
            ("https://rest.alpha.fal.ai@evil.example/tokens/", Err(No)),
            ("https://evil.example@rest.alpha.fal.ai/tokens/", Err(No)),
            ("https://rest.alpha.fal.ai:8443/tokens/", Err(No)),
            ("http://rest.alpha.fal.ai/tokens/", Err(No)),
            ("wss://rest.alpha.fal.ai/tokens/", Err(No)),
            ("https://rest.alpha.fal.ai/tokens/#x", Err(Bad)),
            // user-info, ports, IP literals
            ("https://fal.run@evil.example/", Err(No)),
            ("https://user:pass@fal.run/fal-ai/flux", Err(No)),
            ("https://user@fal.run/fal-ai/flux", Err(No)),
            ("https://evil.example#@fal.run/", Err(Bad)),
            ("https://fal.run:8443/fal-ai/flux", Err(No)),
            ("https://fal.run:80/fal-ai/flux", Err(No)),
            ("https://fal.run:/fal-ai/flux", Err(No)),
            ("https://fal.run:0443/fal-ai/flux", Err(No)),
            ("https://127.0.0.1/fal-ai/flux", Err(No)),
            ("https://2130706433/fal-ai/flux", Err(No)),
            ("https://0x7f.1/fal-ai/flux", Err(No)),
            ("https://[::1]/fal-ai/flux", Err(No)),
            ("https://169.254.169.254/latest/meta-data", Err(No)),
            // other schemes
            ("http://fal.run/fal-ai/flux", Err(No)),
            ("ftp://fal.run/fal-ai/flux", Err(No)),
            ("wss://fal.run/fal-ai/flux", Err(No)),
            ("file:///etc/passwd", Err(No)),
            ("javascript:alert(1)", Err(Bad)),
            ("data:text/plain,fal.run", Err(Bad)),
            // malformed
            ("", Err(Bad)),
            ("fal.run/fal-ai/flux", Err(Bad)),
            ("/fal-ai/flux", Err(Bad)),
            ("//fal.run/fal-ai/flux", Err(Bad)),
            ("https:fal.run/fal-ai/flux", Err(Bad)),
            ("https:/fal.run/fal-ai/flux", Err(Bad)),
            ("https://", Err(Bad)),
            ("https://fal.run/fal-ai/flux#frag", Err(Bad)),
            ("https://fal.run/fal-ai/flux#", Err(Bad)),
            ("https://fal.run\\@evil.example/", Err(Bad)),
            ("https://fal.run/fal ai", Err(Bad)),
            ("https://fal.run/fal-ai/flux\r\nx-evil: 1", Err(Bad)),
            ("https://fal.run/\u{00e9}", Err(Bad)),
            ("https://fäl.run/fal-ai/flux", Err(Bad)),
            ("https://fal.run/\t", Err(Bad)),
        ];
        for (raw, expected) in cases {
            assert_eq!(check(raw), *expected, "{raw:?}");
        }
    }

    #[test]
    fn the_older_rest_host_follows_the_same_rules() {
        // Every form and near-miss on rest.fal.ai gets the same answer on
        // rest.alpha.fal.ai, from the URL list and from an endpoint list; the
        // one difference is the initiate without a storage type, which only
        // releases before 1.2.0 send, and only to the older host.
        let urls = default_list();
        let endpoints = EndpointAllowList::new(vec![Glob::new("fal-ai/flux/**")]);
        let rest = [
            "/tokens/",
            "/tokens",
            "/tokens/x",
            "/tokens/?x=1",
            "//tokens/",
            "/%74okens/",
            "/tokens/../admin",
            "/storage/upload/initiate?storage_type=fal-cdn-v3",
            "/storage/upload/initiate?storage_type=fal-cdn-v3&x=1",
            "/storage/upload/initiate?storage_type=gcs",
            "/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
            "/storage/upload/initiate-multipart",
            "/storage/upload/complete-multipart",
            "/storage/upload/",
            "/users/me",
            "/",
        ];
        for path in rest {
            for method in [http::Method::POST, http::Method::GET, http::Method::PUT] {
                let answers = ["rest.fal.ai", "rest.alpha.fal.ai"].map(|host| {
                    let target = Target::parse(format!("https://{host}{path}").as_bytes()).unwrap();
                    (urls.check(&target), endpoints.check(&method, &target))
                });
                assert_eq!(answers[0], answers[1], "{method} {path}");
            }
        }
        let no_type = |host: &str| {
            let raw = format!("https://{host}/storage/upload/initiate");
            urls.check(&Target::parse(raw.as_bytes()).unwrap())
        };
        assert_eq!(no_type("rest.alpha.fal.ai"), Ok(()));
        assert_eq!(no_type("rest.fal.ai"), Err(ProxyError::TargetNotAllowed));
    }

    #[test]
    fn what_is_sent_is_what_was_checked() {
        let target = Target::parse(b"https://FAL.run:443/fal-ai/../fal-ai/flux?x=1").unwrap();
        assert_eq!(target.as_str(), "https://fal.run/fal-ai/flux?x=1");
        assert_eq!(target.host(), "fal.run");
        assert_eq!(target.path_and_query(), "/fal-ai/flux?x=1");
        // Dot segments cannot climb out of a pattern's prefix.
        let list = UrlAllowList::new(vec![UrlPattern::parse("fal.run/fal-ai/**").unwrap()]);
        let climbing = Target::parse(b"https://fal.run/fal-ai/%2e%2e/admin").unwrap();
        assert_eq!(climbing.path(), "/admin");
        assert_eq!(list.check(&climbing), Err(ProxyError::TargetNotAllowed));
    }

    /// The fast path gives what the WHATWG parse gives, on the forms it
    /// takes and on near misses that must fall through to the parser.
    #[test]
    fn fast_path_agrees_with_the_parser() {
        let hosts = [
            "fal.run",
            "queue.fal.run",
            "rest.alpha.fal.ai",
            "FAL.run",
            "fal.RUN",
            "fal.run.",
            ".fal.run",
            "fal..run",
            "1.2.3.4",
            "fal.0x1f",
            "fal.12",
            "xn--fal.run",
            "fal.xn--run",
            "xn--bcher-kva.example",
            "a-b.c-d.run",
            "-a.run",
            "fal.run:443",
            "fal.run:80",
            "u@fal.run",
            "fal.run%2e",
            "fal.r_n",
            "localhost",
            "0x7f.1",
        ];
        let paths = [
            "",
            "/",
            "/fal-ai/flux/dev",
            "/a/./b",
            "/a/../b",
            "/..",
            "/.",
            "/a/.",
            "/a/..",
            "//a",
            "/.a/..b/...",
            "/%2e%2e/x",
            "/a%2Fb",
            "/a;b",
            "/a b",
            "/~x_y-z.w",
            "/a/",
            "/a\"b",
            "/a<b>",
            "/a'b",
            "/a`b",
            "/a{b}",
            "/a|b",
            "/a^b",
        ];
        let queries = [
            "",
            "?",
            "?a=b",
            "?a=b&c=d",
            "??",
            "?a%",
            "?a%zz",
            "?a'b",
            "?a\"b",
            "?a<b>",
            "?a`b",
            "?a{b}|^",
            "?a=b#f",
            "#f",
            "?x=/..",
            "?storage_type=fal-cdn-v3",
        ];
        let mut checked = 0;
        for host in hosts {
            for path in paths {
                for query in queries {
                    for scheme in ["https://", "HTTPS://", "https:/", "http://"] {
                        let raw = format!("{scheme}{host}{path}{query}");
                        if !raw.bytes().all(|byte| (0x21..=0x7e).contains(&byte)) {
                            continue;
                        }
                        let fast = Target::already_canonical(&raw);
                        let slow = Target::parse_whatwg(&raw);
                        if let Some(fast) = fast {
                            assert_eq!(Ok(fast), slow, "{raw}");
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 100, "the fast path took only {checked} forms");
        for taken in [
            "https://fal.run/fal-ai/flux/dev",
            "https://queue.fal.run/fal-ai/flux/requests/abc-123/status?logs=1",
            "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
        ] {
            assert!(Target::already_canonical(taken).is_some(), "{taken}");
        }
    }

    #[test]
    fn header_must_be_present_once() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            Target::from_headers(&headers),
            Err(ProxyError::MissingTargetUrl)
        );
        headers.insert(TARGET_URL_HEADER, HeaderValue::from_static(""));
        assert_eq!(
            Target::from_headers(&headers),
            Err(ProxyError::InvalidTargetUrl)
        );
        headers.insert(
            TARGET_URL_HEADER,
            HeaderValue::from_static("https://fal.run/a"),
        );
        assert!(Target::from_headers(&headers).is_ok());
        headers.append(
            TARGET_URL_HEADER,
            HeaderValue::from_static("https://fal.run/a"),
        );
        assert_eq!(
            Target::from_headers(&headers),
            Err(ProxyError::InvalidTargetUrl)
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            TARGET_URL_HEADER,
            HeaderValue::from_bytes(b"https://fal.run/\xc3\xa9").unwrap(),
        );
        assert_eq!(
            Target::from_headers(&headers),
            Err(ProxyError::InvalidTargetUrl)
        );
    }

    #[test]
    fn operator_patterns() {
        let list = UrlAllowList::new(vec![
            UrlPattern::parse("https://rest.fal.ai/storage/upload/complete-multipart?*").unwrap(),
            UrlPattern::parse("Example.COM").unwrap(),
        ]);
        let check = |raw: &str| list.check(&Target::parse(raw.as_bytes()).unwrap());
        assert_eq!(
            check("https://rest.fal.ai/storage/upload/complete-multipart?upload_id=1"),
            Ok(())
        );
        assert_eq!(check("https://example.com/"), Ok(()));
        assert_eq!(
            check("https://example.com/x"),
            Err(ProxyError::TargetNotAllowed)
        );
        for bad in [
            "",
            "*.fal.run/**",
            "http://fal.run/**",
            "fal.run:8443/**",
            "/x",
            "user@fal.run/**",
        ] {
            assert!(UrlPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn endpoint_allow_list_table() {
        let list = |patterns: &[&str]| {
            EndpointAllowList::new(patterns.iter().map(|p| Glob::new(p)).collect())
        };
        let flux_all = list(&["fal-ai/flux/**"]);
        let flux_dev = list(&["fal-ai/flux/dev"]);
        let owner = list(&["fal-ai/*"]);
        use ProxyError::EndpointNotAllowed as No;
        let cases: &[(&EndpointAllowList, &str, Result<(), ProxyError>)] = &[
            (&flux_all, "https://fal.run/fal-ai/flux/dev", Ok(())),
            (&flux_all, "https://fal.run/fal-ai/flux", Ok(())),
            (&flux_all, "https://queue.fal.run/fal-ai/flux/dev", Ok(())),
            (
                &flux_all,
                "https://queue.fal.run/fal-ai/flux/requests/r1/status",
                Ok(()),
            ),
            (&flux_all, "https://fal.run/fal-ai/flux-pro", Err(No)),
            (&flux_all, "https://fal.run/fal-ai/other", Err(No)),
            (
                &flux_all,
                "https://queue.fal.run/fal-ai/other/requests/r1/status",
                Err(No),
            ),
            (
                &flux_all,
                "https://queue.fal.run/fal-ai/other/requests/r1/cancel",
                Err(No),
            ),
            (&flux_all, "https://rest.fal.ai/tokens/", Err(No)),
            (
                &flux_all,
                "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
                Ok(()),
            ),
            (&flux_dev, "https://fal.run/fal-ai/flux/dev", Ok(())),
            (&flux_dev, "https://fal.run/fal-ai/flux/dev/stream", Ok(())),
            (&flux_dev, "https://queue.fal.run/fal-ai/flux/dev", Ok(())),
            (
                &flux_dev,
                "https://queue.fal.run/fal-ai/flux/requests/r1/status",
                Ok(()),
            ),
            (
                &flux_dev,
                "https://queue.fal.run/fal-ai/flux/requests/r1/status/stream",
                Ok(()),
            ),
            (
                &flux_dev,
                "https://queue.fal.run/fal-ai/flux/requests/r1",
                Ok(()),
            ),
            (
                &flux_dev,
                "https://queue.fal.run/fal-ai/flux/requests/r1/cancel",
                Ok(()),
            ),
            (
                &flux_dev,
                "https://queue.fal.run/fal-ai/flux/requests/",
                Err(No),
            ),
            (&flux_dev, "https://fal.run/fal-ai/flux/schnell", Err(No)),
            (
                &flux_dev,
                "https://queue.fal.run/fal-ai/flux/schnell",
                Err(No),
            ),
            (
                &flux_dev,
                "https://fal.run/fal-ai/flux/requests/r1/status",
                Err(No),
            ),
            (&flux_dev, "https://fal.run/fal-ai/flux/dev/x", Err(No)),
            (&flux_dev, "https://fal.run/fal-ai/flux", Err(No)),
            (&owner, "https://fal.run/fal-ai/anything", Ok(())),
            (&owner, "https://fal.run/fal-ai/anything/sub", Err(No)),
            (
                &owner,
                "https://queue.fal.run/fal-ai/anything/requests/r1",
                Ok(()),
            ),
            (
                &owner,
                "https://queue.fal.run/someone/anything/requests/r1",
                Err(No),
            ),
            // encoded separators never pass an endpoint list
            (
                &owner,
                "https://fal.run/fal-ai/x%2F..%2F..%2Fevil%2Fapp",
                Err(No),
            ),
            (&owner, "https://fal.run/fal-ai/x%2f", Err(No)),
            (&owner, "https://fal.run/fal-ai/x%5Cy", Err(No)),
            (
                &flux_dev,
                "https://queue.fal.run/fal-ai/flux/requests/x/..%2F..%2F..%2Fevil%2Fapp",
                Err(No),
            ),
            (
                &flux_dev,
                "https://queue.fal.run/fal-ai/flux/requests/r1/other",
                Err(No),
            ),
            (
                &flux_dev,
                "https://queue.fal.run/fal-ai/flux/requests/r1/status/x",
                Err(No),
            ),
            // rest.fal.ai: storage uploads only
            (&flux_all, "https://rest.fal.ai//tokens/", Err(No)),
            (&flux_all, "https://rest.fal.ai/%74okens/", Err(No)),
            (
                &flux_all,
                "https://rest.fal.ai/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
                Ok(()),
            ),
            // the older REST host: the same rules
            (&flux_all, "https://rest.alpha.fal.ai/tokens/", Err(No)),
            (&flux_all, "https://REST.ALPHA.fal.ai/tokens/", Err(No)),
            (&flux_all, "https://rest.alpha.fal.ai//tokens/", Err(No)),
            (&flux_all, "https://rest.alpha.fal.ai/%74okens/", Err(No)),
            (&owner, "https://rest.alpha.fal.ai/tokens/", Err(No)),
            (
                &flux_all,
                "https://rest.alpha.fal.ai/storage/upload/initiate",
                Ok(()),
            ),
            (
                &flux_dev,
                "https://rest.alpha.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
                Ok(()),
            ),
            (
                &flux_all,
                "https://rest.alpha.fal.ai/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
                Ok(()),
            ),
            (&flux_all, "https://rest.alpha.fal.ai/users/me", Err(No)),
            (&flux_all, "https://example.com/anything", Ok(())),
        ];
        for (list, raw, expected) in cases {
            let target = Target::parse(raw.as_bytes()).unwrap();
            let method = if raw.ends_with("/cancel") {
                http::Method::PUT
            } else if raw.contains("/requests/") {
                http::Method::GET
            } else {
                http::Method::POST
            };
            assert_eq!(
                list.check(&method, &target),
                *expected,
                "{method} {raw:?} with {:?}",
                list.patterns
            );
        }
        // Queue paths pass only with the method the client uses for them.
        let status =
            Target::parse(b"https://queue.fal.run/fal-ai/flux/requests/r1/status").unwrap();
        let cancel =
            Target::parse(b"https://queue.fal.run/fal-ai/flux/requests/r1/cancel").unwrap();
        assert_eq!(flux_dev.check(&http::Method::GET, &status), Ok(()));
        assert_eq!(flux_dev.check(&http::Method::POST, &status), Err(No));
        assert_eq!(flux_dev.check(&http::Method::PUT, &cancel), Ok(()));
        assert_eq!(flux_dev.check(&http::Method::DELETE, &cancel), Err(No));
    }
}
