//! Configuration: every setting, parsed and validated once.
//!
//! The core reads no environment. A target hands [`Config::from_lookup`] a
//! function that looks a name up (`std::env::var` on native targets, the
//! Worker's `Env` on Cloudflare, a map in tests).

use crate::auth::Auth;
use crate::cors::Cors;
use crate::egress::EgressProxy;
use crate::key::{ApiKey, KeyMode};
use crate::limits::Limits;
use crate::log::{Level, LogFormat, LogLine};
use crate::pattern::Glob;
use crate::target::{DEFAULT_ALLOW_URLS, EndpointAllowList, UrlAllowList, UrlPattern};
use std::fmt;
use std::fmt::Write as _;
use std::time::Duration;

/// The default request body limit: 32 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;

/// The default time to wait for the upstream's response head.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Every setting the proxy reads, by its environment variable name.
pub mod vars {
    /// The server's fal key.
    pub const FAL_KEY: &str = "FAL_KEY";
    /// The id half of a fal key given in two parts.
    pub const FAL_KEY_ID: &str = "FAL_KEY_ID";
    /// The secret half of a fal key given in two parts.
    pub const FAL_KEY_SECRET: &str = "FAL_KEY_SECRET";
    /// `server`, `user` or `user-or-server`.
    pub const KEY_MODE: &str = "FAL_PROXY_KEY_MODE";
    /// Extra URL patterns allowed besides the defaults.
    pub const ALLOW_URLS: &str = "FAL_PROXY_ALLOW_URLS";
    /// The endpoints (fal apps) allowed; unset allows every endpoint.
    pub const ALLOW_ENDPOINTS: &str = "FAL_PROXY_ALLOW_ENDPOINTS";
    /// Host names the proxy answers to (DNS-rebinding protection); unset: any.
    pub const ALLOWED_HOSTS: &str = "FAL_PROXY_ALLOWED_HOSTS";
    /// Origins allowed cross-origin (CORS); unset turns CORS off.
    pub const ALLOWED_ORIGINS: &str = "FAL_PROXY_ALLOWED_ORIGINS";
    /// The request body limit in bytes.
    pub const MAX_BODY_BYTES: &str = "FAL_PROXY_MAX_BODY_BYTES";
    /// Seconds to wait for the upstream's response head.
    pub const TIMEOUT_SECS: &str = "FAL_PROXY_TIMEOUT_SECS";
    /// Test seam: an origin that stands in for every fal host.
    pub const UPSTREAM: &str = "FAL_PROXY_UPSTREAM";
    /// Native server only: `off` stops it serving the playground page at `/`.
    pub const PLAYGROUND: &str = "FAL_PROXY_PLAYGROUND";
    /// `text` or `json`: how log lines are written.
    pub const LOG_FORMAT: &str = "FAL_PROXY_LOG_FORMAT";
    /// `1`: native targets send upstream requests through `HTTPS_PROXY`
    /// (minus `NO_PROXY`).
    pub const USE_ENV_PROXY: &str = "FAL_PROXY_USE_ENV_PROXY";
    /// The auth provider's JWKS URL (app-user authentication).
    pub const AUTH_JWKS_URL: &str = "FAL_PROXY_AUTH_JWKS_URL";
    /// A shared HMAC secret for app-user tokens (HS256/384/512).
    pub const AUTH_JWT_SECRET: &str = "FAL_PROXY_AUTH_JWT_SECRET";
    /// Accepted token issuers (`iss`), comma-separated.
    pub const AUTH_ISSUER: &str = "FAL_PROXY_AUTH_ISSUER";
    /// Accepted token audiences (`aud`), comma-separated.
    pub const AUTH_AUDIENCE: &str = "FAL_PROXY_AUTH_AUDIENCE";
    /// Rate-limit windows per identity (`10/min,200/day`); unset: no limit.
    pub const RATE_LIMIT: &str = "FAL_PROXY_RATE_LIMIT";
    /// Units per endpoint pattern (`fal-ai/kling-video/**=50`); else 1.
    pub const ENDPOINT_COSTS: &str = "FAL_PROXY_ENDPOINT_COSTS";
    /// Where the counters live: `memory`, `redis://`, `https://` (Upstash
    /// REST), `durable-object` (Worker).
    pub const RATE_STORE: &str = "FAL_PROXY_RATE_STORE";
    /// The Upstash REST store's token.
    pub const RATE_STORE_TOKEN: &str = "FAL_PROXY_RATE_STORE_TOKEN";
    /// `closed` (503 when the store cannot answer) or `open`.
    pub const RATE_STORE_FAILURE: &str = "FAL_PROXY_RATE_STORE_FAILURE";
    /// Native server only: the header your own load balancer puts the
    /// client's address in (`x-forwarded-for`, `x-real-ip`); unset: the peer.
    pub const CLIENT_IP_HEADER: &str = "FAL_PROXY_CLIENT_IP_HEADER";

    /// Every setting the core reads, for a target that must notice when
    /// they change (the Worker keeps its parsed configuration per isolate).
    pub const ALL: &[&str] = &[
        FAL_KEY,
        FAL_KEY_ID,
        FAL_KEY_SECRET,
        KEY_MODE,
        ALLOW_URLS,
        ALLOW_ENDPOINTS,
        ALLOWED_HOSTS,
        ALLOWED_ORIGINS,
        MAX_BODY_BYTES,
        TIMEOUT_SECS,
        UPSTREAM,
        AUTH_JWKS_URL,
        AUTH_JWT_SECRET,
        AUTH_ISSUER,
        AUTH_AUDIENCE,
        RATE_LIMIT,
        ENDPOINT_COSTS,
        RATE_STORE,
        RATE_STORE_TOKEN,
        RATE_STORE_FAILURE,
        LOG_FORMAT,
        USE_ENV_PROXY,
        BODY_IDLE_TIMEOUT_SECS,
    ];
    /// Seconds a streamed request body may go without progress.
    pub const BODY_IDLE_TIMEOUT_SECS: &str = "FAL_PROXY_BODY_IDLE_TIMEOUT_SECS";
}

/// A setting that is present but wrong. Names the variable; never echoes a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}: {reason}")]
pub struct ConfigError {
    /// The variable's name.
    pub var: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// The answer to every request of a deployment whose settings are wrong
    /// (a serverless function must not crash-loop): a JSON 500
    /// `invalid_configuration` naming the variable, never its value.
    pub fn to_response(&self) -> http::Response<bytes::Bytes> {
        crate::error::json_error(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            &format!(
                "The proxy is misconfigured: {} is invalid. Its log says why; fix the variable and redeploy.",
                self.var
            ),
            "invalid_configuration",
        )
    }

    pub(crate) fn new(var: &'static str, reason: impl Into<String>) -> Self {
        Self {
            var,
            reason: reason.into(),
        }
    }
}

/// The proxy's whole configuration. `Debug` never shows a key.
#[derive(Clone)]
pub struct Config {
    pub(crate) server_key: Option<ApiKey>,
    pub(crate) key_mode: KeyMode,
    pub(crate) allow_urls: UrlAllowList,
    pub(crate) extra_urls: Vec<String>,
    pub(crate) allow_endpoints: Option<EndpointAllowList>,
    pub(crate) cors: Option<Cors>,
    pub(crate) allowed_hosts: Option<Vec<String>>,
    pub(crate) max_body_bytes: u64,
    pub(crate) timeout: Duration,
    pub(crate) body_idle_timeout: Duration,
    pub(crate) upstream: Option<String>,
    pub(crate) log_format: LogFormat,
    pub(crate) egress: Option<EgressProxy>,
    pub(crate) auth: Option<Auth>,
    pub(crate) limits: Option<Limits>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field(
                "server_key",
                &self.server_key.as_ref().map(|_| "<redacted>"),
            )
            .field("key_mode", &self.key_mode)
            .field("extra_urls", &self.extra_urls)
            .field(
                "allow_endpoints",
                &self
                    .allow_endpoints
                    .as_ref()
                    .map(|list| list.patterns().collect::<Vec<_>>()),
            )
            .field("cors", &self.cors)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("timeout", &self.timeout)
            .field("body_idle_timeout", &self.body_idle_timeout)
            .field("upstream", &self.upstream)
            .field("log_format", &self.log_format)
            .field("egress", &self.egress)
            .field("auth", &self.auth)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Config {
    /// Parses every setting through `lookup`. Unset and empty values mean
    /// the default. The first bad value is reported with its variable name.
    pub fn from_lookup<F>(lookup: F) -> Result<Self, ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());

        let server_key = match (
            get(vars::FAL_KEY),
            get(vars::FAL_KEY_ID),
            get(vars::FAL_KEY_SECRET),
        ) {
            (Some(key), _, _) => Some(ApiKey::new(key.trim()).ok_or_else(|| {
                ConfigError::new(
                    vars::FAL_KEY,
                    "not a valid fal key (visible ASCII, no spaces, at most 512 bytes)",
                )
            })?),
            (None, Some(id), Some(secret)) => Some(
                ApiKey::new(&format!("{}:{}", id.trim(), secret.trim())).ok_or_else(|| {
                    ConfigError::new(
                        vars::FAL_KEY_ID,
                        "FAL_KEY_ID and FAL_KEY_SECRET do not form a valid fal key",
                    )
                })?,
            ),
            (None, Some(_), None) => {
                return Err(ConfigError::new(
                    vars::FAL_KEY_SECRET,
                    "FAL_KEY_ID is set but FAL_KEY_SECRET is not",
                ));
            }
            (None, None, Some(_)) => {
                return Err(ConfigError::new(
                    vars::FAL_KEY_ID,
                    "FAL_KEY_SECRET is set but FAL_KEY_ID is not",
                ));
            }
            (None, None, None) => None,
        };

        let key_mode = match get(vars::KEY_MODE) {
            None if server_key.is_some() => KeyMode::Server,
            None => KeyMode::User,
            Some(mode) => match mode.trim().to_ascii_lowercase().as_str() {
                "server" => KeyMode::Server,
                "user" => KeyMode::User,
                "user-or-server" => KeyMode::UserOrServer,
                _ => {
                    return Err(ConfigError::new(
                        vars::KEY_MODE,
                        "expected server, user or user-or-server",
                    ));
                }
            },
        };
        if key_mode != KeyMode::User && server_key.is_none() {
            return Err(ConfigError::new(
                vars::FAL_KEY,
                format!(
                    "{}={key_mode} needs FAL_KEY (or FAL_KEY_ID and FAL_KEY_SECRET)",
                    vars::KEY_MODE
                ),
            ));
        }

        let extra_urls = list(get(vars::ALLOW_URLS));
        let mut patterns = Vec::new();
        for pattern in DEFAULT_ALLOW_URLS
            .iter()
            .copied()
            .chain(extra_urls.iter().map(String::as_str))
        {
            patterns.push(
                UrlPattern::parse(pattern)
                    .map_err(|reason| ConfigError::new(vars::ALLOW_URLS, reason))?,
            );
        }

        let allow_endpoints = match get(vars::ALLOW_ENDPOINTS) {
            None => None,
            Some(value) => {
                let mut globs = Vec::new();
                for pattern in list(Some(value)) {
                    let pattern = pattern.trim_matches('/');
                    if pattern.is_empty() || pattern.contains(['?', '#']) {
                        return Err(ConfigError::new(
                            vars::ALLOW_ENDPOINTS,
                            format!(
                                "{pattern:?} is not an endpoint pattern such as fal-ai/flux/**"
                            ),
                        ));
                    }
                    globs.push(Glob::new(pattern));
                }
                Some(EndpointAllowList::new(globs))
            }
        };

        let cors = match get(vars::ALLOWED_ORIGINS) {
            None => None,
            Some(value) => Some(
                Cors::new(&list(Some(value)))
                    .map_err(|reason| ConfigError::new(vars::ALLOWED_ORIGINS, reason))?,
            ),
        };

        let allowed_hosts = match get(vars::ALLOWED_HOSTS) {
            None => None,
            // An explicit opt-out: any host (a native server bound beyond
            // loopback refuses to start without the variable).
            Some(value) if value.trim() == "*" => None,
            Some(value) => {
                let mut hosts = Vec::new();
                for host in list(Some(value)) {
                    let plain = host.trim_start_matches('[').trim_end_matches(']');
                    let valid = !plain.is_empty()
                        && plain
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
                    if !valid {
                        return Err(ConfigError::new(
                            vars::ALLOWED_HOSTS,
                            format!(
                                "{host:?} is not a host name such as localhost or proxy.example.com (no scheme, no port)"
                            ),
                        ));
                    }
                    // Kept bare (`::1`, not `[::1]`), as the request's Host is compared.
                    hosts.push(plain.to_ascii_lowercase());
                }
                Some(hosts)
            }
        };

        let max_body_bytes = match get(vars::MAX_BODY_BYTES) {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(value) => value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&bytes| bytes > 0)
                .ok_or_else(|| {
                    ConfigError::new(vars::MAX_BODY_BYTES, "expected a positive number of bytes")
                })?,
        };

        let timeout = match get(vars::TIMEOUT_SECS) {
            None => DEFAULT_TIMEOUT,
            Some(value) => value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|secs| (1..=3600).contains(secs))
                .map(Duration::from_secs)
                .ok_or_else(|| {
                    ConfigError::new(vars::TIMEOUT_SECS, "expected whole seconds from 1 to 3600")
                })?,
        };

        let body_idle_timeout =
            crate::progress::parse_idle_timeout(get(vars::BODY_IDLE_TIMEOUT_SECS))?;

        let upstream = match get(vars::UPSTREAM) {
            None => None,
            Some(value) => Some(parse_upstream(value.trim())?),
        };

        let log_format = LogFormat::parse(get(vars::LOG_FORMAT).as_deref())?;
        let egress = EgressProxy::from_lookup(get)?;
        let auth = Auth::from_lookup(get)?;
        let limits = Limits::from_lookup(get)?;

        Ok(Self {
            server_key,
            key_mode,
            allow_urls: UrlAllowList::new(patterns),
            extra_urls,
            allow_endpoints,
            cors,
            allowed_hosts,
            max_body_bytes,
            timeout,
            body_idle_timeout,
            upstream,
            log_format,
            egress,
            auth,
            limits,
        })
    }

    /// Whether requests must carry an app user's bearer token.
    pub fn auth_enabled(&self) -> bool {
        self.auth.is_some()
    }

    /// The rate limits, when `FAL_PROXY_RATE_LIMIT` is set.
    pub fn limits(&self) -> Option<&Limits> {
        self.limits.as_ref()
    }

    /// The key mode in force.
    pub fn key_mode(&self) -> KeyMode {
        self.key_mode
    }

    /// Whether a server key is configured.
    pub fn has_server_key(&self) -> bool {
        self.server_key.is_some()
    }

    /// The request body limit in bytes.
    pub fn max_body_bytes(&self) -> u64 {
        self.max_body_bytes
    }

    /// Lowers the body limit to a platform's own (Lambda's 6 MB, Vercel's
    /// 4.5 MB), so the user gets the proxy's clear 413 instead of the
    /// platform's bare error. Never raises it.
    pub fn cap_max_body_bytes(&mut self, platform_limit: u64) {
        self.max_body_bytes = self.max_body_bytes.min(platform_limit);
    }

    /// How long a target waits for the upstream's response head.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long a streamed request body may go without a byte arriving.
    pub fn body_idle_timeout(&self) -> Duration {
        self.body_idle_timeout
    }

    /// The test-seam origin standing in for fal, when one is set.
    pub fn upstream_override(&self) -> Option<&str> {
        self.upstream.as_deref()
    }

    /// How log lines are written.
    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }

    /// The proxy for upstream requests, when `FAL_PROXY_USE_ENV_PROXY` is on.
    pub fn egress_proxy(&self) -> Option<&EgressProxy> {
        self.egress.as_ref()
    }

    /// What a browser page needs to use the proxy, in one sentence for the
    /// start-up summary: CORS on or off, and for which origins; and where
    /// the playground is, when the target serves one. `own_origin` is where
    /// the proxy is served, when the target knows it.
    pub fn browser_summary(&self, own_origin: Option<&str>, playground: Option<&str>) -> String {
        let mut summary = crate::cors::browser_summary(self.cors.as_ref(), own_origin);
        if let Some(url) = playground {
            let _ = write!(summary, "; playground: {url}");
        }
        summary
    }

    /// The warning a target logs once at start when the test seam is set.
    pub fn upstream_warning(&self) -> Option<LogLine> {
        self.upstream.as_ref().map(|origin| {
            LogLine::message(
                Level::Warn,
                format!(
                    "{} is set: validated fal URLs are sent to {origin} instead of fal",
                    vars::UPSTREAM
                ),
            )
        })
    }

    /// One line a target prints at start: key mode, allow-lists, CORS. No key.
    pub fn summary(&self) -> String {
        let mode = match (self.key_mode, self.server_key.is_some()) {
            (KeyMode::User, false) => "user (no FAL_KEY set: every request must carry the visitor's own key in x-fal-user-key)".to_owned(),
            (mode, _) => mode.to_string(),
        };
        let endpoints = match &self.allow_endpoints {
            None => "any".to_owned(),
            Some(list) => list.patterns().collect::<Vec<_>>().join(","),
        };
        let cors = match &self.cors {
            None => "off".to_owned(),
            Some(cors) => cors.to_string(),
        };
        let hosts = match &self.allowed_hosts {
            None => "any".to_owned(),
            Some(hosts) => hosts.join(","),
        };
        let auth = match &self.auth {
            None if self.server_key.is_some() && self.key_mode != KeyMode::User => {
                "off (anyone who can reach this proxy can spend FAL_KEY)".to_owned()
            }
            None => "off".to_owned(),
            Some(auth) => auth.summary(),
        };
        let mut summary = format!(
            "key mode: {mode}; endpoints: {endpoints}; cors: {cors}; hosts: {hosts}; auth: {auth}"
        );
        if let Some(egress) = &self.egress {
            let _ = write!(summary, "; egress: {egress}");
        }
        match &self.limits {
            None => summary.push_str("; limits: off"),
            Some(limits) => {
                let _ = write!(summary, "; limits: {}", limits.summary());
            }
        }
        summary
    }
}

/// Splits a list setting on commas and white space.
pub(crate) fn list(value: Option<String>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_upstream(value: &str) -> Result<String, ConfigError> {
    let bad = |reason: &str| ConfigError::new(vars::UPSTREAM, reason);
    let url = url::Url::parse(value).map_err(|_| bad("expected an absolute http(s) URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad("expected an http:// or https:// origin"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not contain user-info"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not contain a query or fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    pub(crate) fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults() {
        let no_key = config(&[]).unwrap();
        assert_eq!(no_key.key_mode(), KeyMode::User);
        assert!(!no_key.has_server_key());
        assert_eq!(no_key.max_body_bytes(), DEFAULT_MAX_BODY_BYTES);
        assert_eq!(no_key.timeout(), DEFAULT_TIMEOUT);
        assert!(no_key.cors.is_none());
        assert!(no_key.allow_endpoints.is_none());
        assert!(no_key.upstream_override().is_none());

        let with_key = config(&[("FAL_KEY", "id:secret")]).unwrap();
        assert_eq!(with_key.key_mode(), KeyMode::Server);
        let split = config(&[("FAL_KEY_ID", "id"), ("FAL_KEY_SECRET", "secret")]).unwrap();
        assert_eq!(split.server_key, with_key.server_key);
        let empty = config(&[("FAL_KEY", ""), ("FAL_PROXY_KEY_MODE", " ")]).unwrap();
        assert_eq!(empty.key_mode(), KeyMode::User);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("FAL_PROXY_KEY_MODE", "both")], vars::KEY_MODE),
            (&[("FAL_PROXY_KEY_MODE", "server")], vars::FAL_KEY),
            (&[("FAL_PROXY_KEY_MODE", "user-or-server")], vars::FAL_KEY),
            (&[("FAL_KEY", "has space")], vars::FAL_KEY),
            (&[("FAL_KEY_ID", "id")], vars::FAL_KEY_SECRET),
            (&[("FAL_KEY_SECRET", "s")], vars::FAL_KEY_ID),
            (
                &[("FAL_PROXY_ALLOW_URLS", "*.evil.example/**")],
                vars::ALLOW_URLS,
            ),
            (
                &[("FAL_PROXY_ALLOW_URLS", "http://fal.dev/**")],
                vars::ALLOW_URLS,
            ),
            (
                &[("FAL_PROXY_ALLOW_ENDPOINTS", "fal-ai/x?y")],
                vars::ALLOW_ENDPOINTS,
            ),
            (
                &[("FAL_PROXY_ALLOWED_ORIGINS", "app.example")],
                vars::ALLOWED_ORIGINS,
            ),
            (
                &[("FAL_PROXY_ALLOWED_ORIGINS", "https://app.example/path")],
                vars::ALLOWED_ORIGINS,
            ),
            (
                &[("FAL_PROXY_ALLOWED_HOSTS", "http://localhost")],
                vars::ALLOWED_HOSTS,
            ),
            (
                &[("FAL_PROXY_ALLOWED_HOSTS", "localhost/x")],
                vars::ALLOWED_HOSTS,
            ),
            (&[("FAL_PROXY_MAX_BODY_BYTES", "0")], vars::MAX_BODY_BYTES),
            (&[("FAL_PROXY_MAX_BODY_BYTES", "1MB")], vars::MAX_BODY_BYTES),
            (&[("FAL_PROXY_TIMEOUT_SECS", "0")], vars::TIMEOUT_SECS),
            (&[("FAL_PROXY_TIMEOUT_SECS", "-1")], vars::TIMEOUT_SECS),
            (&[("FAL_PROXY_UPSTREAM", "127.0.0.1:9")], vars::UPSTREAM),
            (&[("FAL_PROXY_UPSTREAM", "ftp://127.0.0.1")], vars::UPSTREAM),
            (
                &[("FAL_PROXY_UPSTREAM", "http://u:p@127.0.0.1")],
                vars::UPSTREAM,
            ),
        ];
        for (pairs, var) in cases {
            let error = config(pairs).expect_err(&format!("{pairs:?} should fail"));
            assert_eq!(error.var, *var, "{pairs:?}");
            assert!(error.to_string().contains(var));
        }
    }

    #[test]
    fn errors_and_debug_never_show_a_key() {
        let secret = "my-id:my-very-secret-value";
        let config = config(&[
            ("FAL_KEY", secret),
            ("FAL_PROXY_ALLOWED_ORIGINS", "https://a.example"),
        ])
        .unwrap();
        let shown = format!("{config:?} {}", config.summary());
        assert!(!shown.contains("secret-value"), "{shown}");
        let error = super::tests::config(&[("FAL_KEY", "my-id:my very-secret-value")]).unwrap_err();
        assert!(!error.to_string().contains("secret-value"));
    }

    #[test]
    fn a_config_error_answers_invalid_configuration() {
        let error = config(&[("FAL_KEY", "id:secret value")]).unwrap_err();
        let response = error.to_response();
        assert_eq!(response.status(), 500);
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["error_type"], "invalid_configuration");
        assert!(body["detail"].as_str().unwrap().contains("FAL_KEY"));
        assert!(!response.body().windows(5).any(|w| w == b"value"));
    }

    #[test]
    fn lists_and_numbers() {
        let config = config(&[
            (
                "FAL_PROXY_ALLOW_URLS",
                "fal.dev/**, https://queue.fal.dev/**\nexample.com/x",
            ),
            (
                "FAL_PROXY_ALLOW_ENDPOINTS",
                "fal-ai/flux/**,/fal-ai/fast-*/",
            ),
            ("FAL_PROXY_MAX_BODY_BYTES", "1000"),
            ("FAL_PROXY_TIMEOUT_SECS", "5"),
            ("FAL_PROXY_UPSTREAM", "http://127.0.0.1:9999/"),
        ])
        .unwrap();
        assert_eq!(config.extra_urls.len(), 3);
        let endpoints: Vec<_> = config
            .allow_endpoints
            .as_ref()
            .unwrap()
            .patterns()
            .collect();
        assert_eq!(endpoints, ["fal-ai/flux/**", "fal-ai/fast-*"]);
        assert_eq!(config.max_body_bytes(), 1000);
        assert_eq!(config.timeout(), Duration::from_secs(5));
        assert_eq!(config.upstream_override(), Some("http://127.0.0.1:9999"));
        let mut capped = config.clone();
        capped.cap_max_body_bytes(500);
        assert_eq!(capped.max_body_bytes(), 500);
        capped.cap_max_body_bytes(5000);
        assert_eq!(capped.max_body_bytes(), 500);
    }
}
