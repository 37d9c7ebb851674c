//! A serverless function's proxy, decided once per process.

use crate::auth::KeySetSource;
use crate::config::{Config, ConfigError};
use crate::error::ProxyError;
use crate::forward::{Proxy, ProxyBody, Upstream};
use crate::limits::{CounterStore, StoreKind};
use crate::log::{Level, LogFormat, LogLine};
use http::{Request, Response};
use std::fmt::Display;

/// What a function's cold start produced: a ready proxy, or the reason it
/// has none. A function must not crash-loop on a bad setting (the platform
/// would answer with its own bare error, and retry), so the reason is
/// answered on every request instead.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one value per process, built once and never moved"
)]
pub enum Function<U, S> {
    /// Forwarding with this proxy and upstream client.
    Ready {
        /// The proxy, with the platform's body limit applied.
        proxy: Proxy,
        /// The HTTP client, built once.
        upstream: U,
        /// The rate-limit counters' store, built once.
        store: S,
    },
    /// A setting is invalid: every request gets a JSON 500 naming it.
    Misconfigured(ConfigError),
    /// The HTTP client could not be built: every request gets a JSON 500.
    NoClient,
}

impl<U, S> Function<U, S> {
    /// Parses the configuration through `lookup`, lowers the body limit to
    /// `platform_max_body` bytes, builds the client and the rate store
    /// (a store it cannot build is a bad setting), and reports the outcome
    /// in a few lines through `log`, rendered in the configured format
    /// (never a key): what is in force, and what a browser page on another
    /// origin needs.
    pub fn start<E: Display>(
        lookup: impl Fn(&str) -> Option<String>,
        platform: &str,
        platform_max_body: u64,
        client: impl FnOnce(&Config) -> Result<U, E>,
        store: impl FnOnce(&Config) -> Result<S, ConfigError>,
        log: impl Fn(&str),
    ) -> Self {
        let format = LogFormat::from_lookup(&lookup);
        let say = |line: LogLine| log(&line.render(format));
        let mut config = match Config::from_lookup(lookup) {
            Ok(config) => config,
            Err(error) => {
                say(LogLine::message(
                    Level::Error,
                    format!(
                        "{error}; every request is answered 500 invalid_configuration until it is fixed"
                    ),
                ));
                return Self::Misconfigured(error);
            }
        };
        config.cap_max_body_bytes(platform_max_body);
        let upstream = match client(&config) {
            Ok(upstream) => upstream,
            Err(error) => {
                say(LogLine::message(
                    Level::Error,
                    format!("cannot build the HTTP client: {error}"),
                ));
                return Self::NoClient;
            }
        };
        let store = match store(&config) {
            Ok(store) => store,
            Err(error) => {
                say(LogLine::message(
                    Level::Error,
                    format!(
                        "{error}; every request is answered 500 invalid_configuration until it is fixed"
                    ),
                ));
                return Self::Misconfigured(error);
            }
        };
        if let Some(warning) = config.upstream_warning() {
            say(warning);
        }
        if config
            .limits()
            .is_some_and(|limits| *limits.store() == StoreKind::Memory)
        {
            say(LogLine::message(
                Level::Warn,
                format!(
                    "FAL_PROXY_RATE_STORE=memory: on {platform} each instance counts alone, so a user can get the limit once per instance; set FAL_PROXY_RATE_STORE to a redis:// or Upstash https:// store to share the counts"
                ),
            ));
        }
        say(LogLine::message(
            Level::Info,
            format!(
                "ready on {platform}; {}; body limit: {} bytes; upstream timeout: {} s",
                config.summary(),
                config.max_body_bytes(),
                config.timeout().as_secs()
            ),
        ));
        say(LogLine::message(
            Level::Info,
            config.browser_summary(None, None),
        ));
        Self::Ready {
            proxy: Proxy::new(config, platform),
            upstream,
            store,
        }
    }

    /// Answers one request. Never fails.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ProxyBody<U::Body>>
    where
        U: Upstream<B> + KeySetSource,
        S: CounterStore,
    {
        match self {
            Self::Ready {
                proxy,
                upstream,
                store,
            } => proxy.forward(upstream, store, request).await,
            Self::Misconfigured(error) => error.to_response().map(ProxyBody::Full),
            Self::NoClient => ProxyError::Internal.to_response().map(ProxyBody::Full),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::UpstreamError;
    use crate::limits::MemoryStore;
    use bytes::Bytes;
    use std::cell::RefCell;

    struct Echo;

    impl Upstream<Bytes> for Echo {
        type Body = Bytes;
        async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, UpstreamError> {
            Ok(Response::new(request.into_body()))
        }
    }

    impl KeySetSource for Echo {
        async fn fetch_key_set(
            &self,
            _url: &str,
        ) -> Result<crate::auth::KeySetDocument, crate::auth::KeySetError> {
            Err(crate::auth::KeySetError::Unreachable)
        }
    }

    type EchoFunction = Function<Echo, MemoryStore>;

    fn start(pairs: &'static [(&str, &str)], client_ok: bool) -> (EchoFunction, Vec<String>) {
        let lines = RefCell::new(Vec::new());
        let function = Function::start(
            |name| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            },
            "test",
            1000,
            |_| if client_ok { Ok(Echo) } else { Err("no roots") },
            |_| Ok(MemoryStore::new()),
            |line| lines.borrow_mut().push(line.to_owned()),
        );
        (function, lines.into_inner())
    }

    fn run(function: &EchoFunction) -> Response<ProxyBody<Bytes>> {
        let request = Request::post("/api/fal/proxy")
            .header("x-fal-target-url", "https://fal.run/fal-ai/x")
            .body(Bytes::from_static(b"{}"))
            .unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(function.handle(request))
    }

    #[test]
    fn outcomes() {
        let (ready, lines) = start(
            &[
                ("FAL_KEY", "id:secret"),
                ("FAL_PROXY_MAX_BODY_BYTES", "5000"),
            ],
            true,
        );
        let Function::Ready { proxy, .. } = &ready else {
            panic!("ready")
        };
        assert_eq!(proxy.config().max_body_bytes(), 1000);
        assert_eq!(run(&ready).status(), 200);
        assert!(
            lines.iter().any(|l| l.contains("ready on test")),
            "{lines:?}"
        );

        let (bad, lines) = start(&[("FAL_KEY", "id:secret value")], true);
        assert!(matches!(bad, Function::Misconfigured(_)));
        let response = run(&bad);
        assert_eq!(response.status(), 500);
        let ProxyBody::Full(body) = response.into_body() else {
            panic!("full")
        };
        assert!(String::from_utf8_lossy(&body).contains("invalid_configuration"));
        assert!(
            lines
                .iter()
                .all(|l| l.contains("FAL_KEY") && !l.contains("value")),
            "{lines:?}"
        );

        let (json, lines) = start(
            &[("FAL_KEY", "id:secret"), ("FAL_PROXY_LOG_FORMAT", "json")],
            true,
        );
        assert!(matches!(json, Function::Ready { .. }));
        for line in &lines {
            let parsed: serde_json::Value = serde_json::from_str(line).expect(line);
            assert_eq!(parsed["level"], "info", "{line}");
        }
        assert!(lines.iter().any(|l| l.contains("CORS is off")), "{lines:?}");
        let (bad_json, lines) = start(
            &[("FAL_KEY_ID", "id"), ("FAL_PROXY_LOG_FORMAT", "json")],
            true,
        );
        assert!(matches!(bad_json, Function::Misconfigured(_)));
        let parsed: serde_json::Value = serde_json::from_str(&lines[0]).expect("json");
        assert_eq!(parsed["level"], "error");

        let (no_client, _) = start(&[], false);
        assert!(matches!(no_client, Function::NoClient));
        assert_eq!(run(&no_client).status(), 500);
    }
}
