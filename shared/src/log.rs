//! Log lines, decided here so every target writes the same ones: the fields
//! of what happened, written as `key=value` text or as one JSON object per
//! line (`FAL_PROXY_LOG_FORMAT=json`, for log services that index JSON), and
//! the hints that tell a developer which setting to change.
//!
//! The core has no clock and keeps no state between requests: a target owns
//! one [`Hints`] and feeds it the time, so a hint is written once per origin
//! and never floods the log.

use crate::config::{ConfigError, vars};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `fal-proxy: key=value ...`, for people reading a terminal.
    #[default]
    Text,
    /// One JSON object per line, with the same fields, for Vercel, Lambda
    /// (CloudWatch) and Workers logs, which index JSON.
    Json,
}

impl LogFormat {
    /// Parses `FAL_PROXY_LOG_FORMAT`: `text` (the default) or `json`.
    pub(crate) fn parse(value: Option<&str>) -> Result<Self, ConfigError> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("" | "text") => Ok(Self::Text),
            Some("json") => Ok(Self::Json),
            Some(_) => Err(ConfigError::new(vars::LOG_FORMAT, "expected text or json")),
        }
    }

    /// The format `FAL_PROXY_LOG_FORMAT` asks for, or text when it is unset
    /// or invalid: for the lines a target writes before (or without) a valid
    /// configuration, such as the one reporting a bad setting.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        Self::parse(lookup(vars::LOG_FORMAT).as_deref()).unwrap_or_default()
    }
}

/// How serious a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// What happened (one per request, the start-up summary).
    Info,
    /// Something a person should act on (a hint, the test seam in use).
    Warn,
    /// The proxy cannot work as configured.
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

#[derive(Debug, Clone)]
enum Value {
    Text(String),
    Number(u64),
}

/// One log line: a level, an optional sentence, and fields. Never holds a
/// key, a token or a query string: callers add only what the proxy decided
/// and text from the request (an `Origin` header) made safe to print.
#[derive(Debug, Clone)]
pub struct LogLine {
    level: Level,
    message: Option<String>,
    fields: Vec<(&'static str, Value)>,
}

impl LogLine {
    /// A line of fields only (a request's line).
    pub fn fields(level: Level) -> Self {
        Self {
            level,
            message: None,
            // A request's line has six to ten.
            fields: Vec::with_capacity(10),
        }
    }

    /// A line with a sentence (start-up, hints, errors).
    pub fn message(level: Level, message: impl Into<String>) -> Self {
        Self {
            level,
            message: Some(message.into()),
            fields: Vec::new(),
        }
    }

    /// Adds a text field. The value must be the proxy's own, or text from
    /// the request already made safe to print.
    pub fn text(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.fields.push((key, Value::Text(value.into())));
        self
    }

    /// Adds a number field.
    pub fn number(mut self, key: &'static str, value: u64) -> Self {
        self.fields.push((key, Value::Number(value)));
        self
    }

    /// The line as `format` writes it, without a line break.
    ///
    /// Text: `fal-proxy: [warning: |error: ][sentence ]key=value ...`.
    /// JSON: `{"level":"info",["message":"...",]"key":value,...}`.
    pub fn render(&self, format: LogFormat) -> String {
        match format {
            LogFormat::Text => {
                let mut line = String::with_capacity(160);
                line.push_str("fal-proxy:");
                match self.level {
                    Level::Info => {}
                    Level::Warn => line.push_str(" warning:"),
                    Level::Error => line.push_str(" error:"),
                }
                if let Some(message) = &self.message {
                    line.push(' ');
                    line.push_str(message);
                }
                for (key, value) in &self.fields {
                    line.push(' ');
                    line.push_str(key);
                    line.push('=');
                    match value {
                        Value::Text(text) => line.push_str(text),
                        Value::Number(number) => line.push_str(itoa::Buffer::new().format(*number)),
                    }
                }
                line
            }
            LogFormat::Json => {
                // Written by hand to keep the fields in order; every string
                // goes through serde_json's escaping.
                let quoted = |text: &str| serde_json::Value::from(text).to_string();
                let mut line = format!("{{\"level\":\"{}\"", self.level.as_str());
                if let Some(message) = &self.message {
                    let _ = write!(line, ",\"message\":{}", quoted(message));
                }
                for (key, value) in &self.fields {
                    let _ = match value {
                        Value::Text(text) => write!(line, ",\"{key}\":{}", quoted(text)),
                        Value::Number(number) => write!(line, ",\"{key}\":{number}"),
                    };
                }
                line.push('}');
                line
            }
        }
    }
}

/// The longest untrusted value written to a log, in bytes.
const MAX_UNTRUSTED_BYTES: usize = 120;

/// Text from the request (an `Origin` or `Host` header: attacker-controlled)
/// made safe for one log line: at most 120 bytes, and every byte that is not
/// visible ASCII, and `"` and `\`, written as `\xNN`, so it can neither forge
/// a field nor start a new line, in either format.
pub(crate) fn untrusted(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &byte in bytes.iter().take(MAX_UNTRUSTED_BYTES) {
        if byte.is_ascii_graphic() && byte != b'"' && byte != b'\\' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    if bytes.len() > MAX_UNTRUSTED_BYTES {
        out.push_str("...");
    }
    out
}

/// Something the proxy noticed that a developer should be told, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// A cross-origin preflight arrived while CORS is off: the browser will
    /// refuse the page's requests. Holds the (sanitised) origin.
    CorsOff {
        /// The page's origin, as the browser sent it, made safe to print.
        origin: String,
    },
    /// CORS is on and this origin is not allowed.
    OriginRefused {
        /// The refused origin, made safe to print.
        origin: String,
        /// An allowed origin that differs only by its loopback name
        /// (`localhost` for `127.0.0.1`): the likely mix-up.
        loopback_alias: Option<String>,
    },
}

impl Hint {
    fn origin(&self) -> &str {
        match self {
            Self::CorsOff { origin } | Self::OriginRefused { origin, .. } => origin,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::CorsOff { .. } => "cors_off",
            Self::OriginRefused { .. } => "origin_not_allowed",
        }
    }

    /// The hint as a warning line.
    pub fn to_line(&self) -> LogLine {
        let setting = vars::ALLOWED_ORIGINS;
        let message = match self {
            Self::CorsOff { origin } => format!(
                "a page on another origin ({origin}) sent a CORS preflight, but CORS is off, so the browser will block its requests (\"Failed to fetch\"): set {setting}={origin} to allow it, or serve the page from the proxy's own origin (a dev-server proxy; see \"Local development\" in the README)"
            ),
            Self::OriginRefused {
                origin,
                loopback_alias: Some(alias),
            } => format!(
                "origin {origin} is not in {setting}, which allows {alias}: to a browser localhost and 127.0.0.1 are different origins; add {origin} to {setting}, or open the page as {alias}"
            ),
            Self::OriginRefused {
                origin,
                loopback_alias: None,
            } => format!(
                "origin {origin} is not in {setting}, so it gets 403 origin_not_allowed; add it to {setting} if that page should use the proxy"
            ),
        };
        LogLine::message(Level::Warn, message)
            .text("hint", self.kind())
            .text("origin", self.origin())
    }
}

/// How many origins [`Hints`] remembers; the oldest is forgotten first.
const HINT_MEMORY: usize = 64;
/// How long an origin's hint stays quiet after it was written.
const HINT_QUIET_FOR: Duration = Duration::from_secs(60 * 60);
/// At most this many hints per [`HINT_WINDOW`], whatever the origins (a
/// stream of made-up origins must not flood the log).
const HINT_BUDGET: u32 = 10;
const HINT_WINDOW: Duration = Duration::from_secs(60);

/// The memory behind "once per origin, rate-limited": a target keeps one for
/// its process (or isolate) and asks it, with the current time, whether a
/// request's hint should be written. The time is any monotonic-enough clock
/// as a duration since a fixed point (a process start, the Unix epoch); a
/// clock that steps back only delays hints.
///
/// ```
/// use fal_proxy_core::Hints;
/// static HINTS: Hints = Hints::new();
/// ```
#[derive(Debug)]
pub struct Hints {
    state: Mutex<HintState>,
}

#[derive(Debug)]
struct HintState {
    /// `(kind, origin, when)`, oldest first.
    seen: VecDeque<(&'static str, String, Duration)>,
    window_start: Duration,
    in_window: u32,
}

impl Hints {
    /// An empty memory (`const`, so a target can keep it in a `static`).
    pub const fn new() -> Self {
        Self {
            state: Mutex::new(HintState {
                seen: VecDeque::new(),
                window_start: Duration::ZERO,
                in_window: 0,
            }),
        }
    }

    /// Whether `hint` should be written at `now`: the first time for its
    /// origin in an hour, within the overall budget of ten a minute.
    pub fn admit(&self, hint: &Hint, now: Duration) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        state.admit(hint.kind(), hint.origin(), now)
    }

    /// The hint line for the proxy's `response` (its [`Exchange`] says
    /// what happened), rendered in the configured format, when there is one
    /// to write at `now`.
    ///
    /// [`Exchange`]: crate::Exchange
    pub fn line<B>(&self, response: &http::Response<B>, now: Duration) -> Option<String> {
        self.line_for(
            response.extensions().get::<crate::forward::Exchange>()?,
            now,
        )
    }

    /// [`Hints::line`] for an [`Exchange`] at hand.
    ///
    /// [`Exchange`]: crate::Exchange
    pub fn line_for(&self, exchange: &crate::forward::Exchange, now: Duration) -> Option<String> {
        let hint = exchange.hint()?;
        self.admit(hint, now)
            .then(|| hint.to_line().render(exchange.log_format()))
    }
}

impl Default for Hints {
    fn default() -> Self {
        Self::new()
    }
}

impl HintState {
    fn admit(&mut self, kind: &'static str, origin: &str, now: Duration) -> bool {
        let recent = |at: Duration| now.saturating_sub(at) < HINT_QUIET_FOR;
        if self
            .seen
            .iter()
            .any(|(k, o, at)| *k == kind && o == origin && recent(*at))
        {
            return false;
        }
        if now.saturating_sub(self.window_start) >= HINT_WINDOW || now < self.window_start {
            self.window_start = now;
            self.in_window = 0;
        }
        if self.in_window >= HINT_BUDGET {
            return false;
        }
        self.in_window += 1;
        self.seen.retain(|(k, o, _)| !(*k == kind && o == origin));
        if self.seen.len() >= HINT_MEMORY {
            self.seen.pop_front();
        }
        self.seen.push_back((kind, origin.to_owned(), now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(LogFormat::parse(None).unwrap(), LogFormat::Text);
        assert_eq!(LogFormat::parse(Some(" JSON ")).unwrap(), LogFormat::Json);
        assert_eq!(
            LogFormat::parse(Some("yaml")).unwrap_err().var,
            vars::LOG_FORMAT
        );
        assert_eq!(
            LogFormat::from_lookup(|_| Some("yaml".into())),
            LogFormat::Text
        );
    }

    #[test]
    fn text_and_json_carry_the_same_fields() {
        let line = LogLine::fields(Level::Info)
            .text("method", "POST")
            .number("status", 502)
            .text("cause", "dns");
        assert_eq!(
            line.render(LogFormat::Text),
            "fal-proxy: method=POST status=502 cause=dns"
        );
        let json: serde_json::Value = serde_json::from_str(&line.render(LogFormat::Json)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"level": "info", "method": "POST", "status": 502, "cause": "dns"})
        );
        let warning = LogLine::message(Level::Warn, "look").text("origin", "o");
        assert_eq!(
            warning.render(LogFormat::Text),
            "fal-proxy: warning: look origin=o"
        );
    }

    #[test]
    fn untrusted_text_cannot_forge_a_line_or_a_field() {
        assert_eq!(untrusted(b"http://localhost:5173"), "http://localhost:5173");
        let forged = untrusted(b"http://a status=200\r\nfal-proxy: \"x\\\xff");
        assert_eq!(
            forged,
            "http://a\\x20status=200\\x0d\\x0afal-proxy:\\x20\\x22x\\x5c\\xff"
        );
        assert!(!forged.contains(' ') && !forged.contains('\n'));
        let long = untrusted(&[b'a'; 500]);
        assert_eq!(long.len(), MAX_UNTRUSTED_BYTES + 3);
        let json = LogLine::fields(Level::Info)
            .text("origin", forged)
            .render(LogFormat::Json);
        assert_eq!(json.lines().count(), 1);
        assert!(serde_json::from_str::<serde_json::Value>(&json).is_ok());
    }

    #[test]
    fn hints_once_per_origin_and_rate_limited() {
        let hints = Hints::new();
        let at = |secs| Duration::from_secs(secs);
        let hint = |origin: &str| Hint::CorsOff {
            origin: origin.to_owned(),
        };
        assert!(hints.admit(&hint("http://localhost:5173"), at(1000)));
        assert!(!hints.admit(&hint("http://localhost:5173"), at(1001)));
        // Another kind of hint for the same origin is its own.
        let refused = Hint::OriginRefused {
            origin: "http://localhost:5173".into(),
            loopback_alias: None,
        };
        assert!(hints.admit(&refused, at(1002)));
        // An hour later, once more.
        assert!(hints.admit(&hint("http://localhost:5173"), at(1000 + 3600)));
        // A flood of origins: ten a minute get through.
        let flood = (0..50)
            .filter(|n| hints.admit(&hint(&format!("http://o{n}.example")), at(9000)))
            .count();
        assert_eq!(flood, 10);
        assert!(hints.admit(&hint("http://late.example"), at(9060)));
        // A clock that steps back does not panic or unlock a flood.
        assert!(!hints.admit(&hint("http://late.example"), at(5)));
    }

    #[test]
    fn hint_lines_name_the_setting_and_the_origin() {
        let off = Hint::CorsOff {
            origin: "http://localhost:5173".into(),
        }
        .to_line()
        .render(LogFormat::Text);
        assert!(off.starts_with("fal-proxy: warning: "), "{off}");
        assert!(
            off.contains("FAL_PROXY_ALLOWED_ORIGINS=http://localhost:5173"),
            "{off}"
        );
        assert!(
            off.ends_with("hint=cors_off origin=http://localhost:5173"),
            "{off}"
        );
        let alias = Hint::OriginRefused {
            origin: "http://127.0.0.1:5173".into(),
            loopback_alias: Some("http://localhost:5173".into()),
        }
        .to_line()
        .render(LogFormat::Json);
        let json: serde_json::Value = serde_json::from_str(&alias).unwrap();
        assert_eq!(json["level"], "warn");
        assert_eq!(json["hint"], "origin_not_allowed");
        assert_eq!(json["origin"], "http://127.0.0.1:5173");
        assert!(
            json["message"]
                .as_str()
                .unwrap()
                .contains("localhost and 127.0.0.1 are different origins")
        );
    }
}

/// The proxy's diagnostics end to end: what the request phase notes, what a
/// request's line says, in both formats.
#[cfg(test)]
mod proxy_tests {
    use crate::error::{Cause, UpstreamError};
    use crate::forward::{Exchange, Proxy, Upstream};
    use crate::{Config, Hints};
    use bytes::Bytes;
    use http::{Request, Response};
    use std::collections::HashMap;
    use std::time::Duration;

    struct Failing(UpstreamError);

    impl crate::KeySetSource for Failing {
        async fn fetch_key_set(
            &self,
            _url: &str,
        ) -> Result<crate::KeySetDocument, crate::KeySetError> {
            Err(crate::KeySetError::Unreachable)
        }
    }

    impl Upstream<Bytes> for Failing {
        type Body = Bytes;
        async fn send(&self, _: Request<Bytes>) -> Result<Response<Bytes>, UpstreamError> {
            Err(self.0)
        }
    }

    fn proxy(pairs: &[(&str, &str)]) -> Proxy {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Proxy::new(
            Config::from_lookup(|name| map.get(name).cloned()).unwrap(),
            "test",
        )
    }

    fn run(proxy: &Proxy, upstream: UpstreamError, request: Request<Bytes>) -> Response<()> {
        let response = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(proxy.forward(
                &Failing(upstream),
                &crate::limits::MemoryStore::new(),
                request,
            ));
        response.map(|_| ())
    }

    fn preflight(origin: &[u8]) -> Request<Bytes> {
        Request::options("/api/fal/proxy")
            .header("host", "127.0.0.1:3000")
            .header("origin", http::HeaderValue::from_bytes(origin).unwrap())
            .header("access-control-request-method", "POST")
            .body(Bytes::new())
            .unwrap()
    }

    fn line(response: &Response<()>) -> String {
        response.extensions().get::<Exchange>().unwrap().log_line(
            response.status(),
            Duration::ZERO,
            0,
        )
    }

    #[test]
    fn cors_off_preflight_hints_once() {
        let off = proxy(&[("FAL_KEY", "id:secret")]);
        let hints = Hints::new();
        let now = Duration::from_secs(100);
        let response = run(
            &off,
            UpstreamError::Broken,
            preflight(b"http://localhost:5173"),
        );
        assert_eq!(response.status(), 204);
        let hint = hints.line(&response, now).expect("a hint");
        assert!(
            hint.contains("FAL_PROXY_ALLOWED_ORIGINS=http://localhost:5173"),
            "{hint}"
        );
        assert!(hints.line(&response, now).is_none(), "once per origin");
        assert!(
            line(&response)
                .ends_with("status=204 duration_ms=0 bytes=0 origin=http://localhost:5173"),
            "{}",
            line(&response)
        );
        // The proxy's own origin, and a request without one, need no hint.
        let same = run(
            &off,
            UpstreamError::Broken,
            preflight(b"http://127.0.0.1:3000"),
        );
        assert!(hints.line(&same, now).is_none());
        // With CORS on, an allowed origin's preflight is no news.
        let on = proxy(&[
            ("FAL_KEY", "id:secret"),
            ("FAL_PROXY_ALLOWED_ORIGINS", "http://localhost:5173"),
        ]);
        let allowed = run(
            &on,
            UpstreamError::Broken,
            preflight(b"http://localhost:5173"),
        );
        assert!(Hints::new().line(&allowed, now).is_none());
    }

    #[test]
    fn refused_origin_is_named_sanitised_and_explained() {
        let on = proxy(&[
            ("FAL_KEY", "id:secret"),
            ("FAL_PROXY_ALLOWED_ORIGINS", "http://localhost:5173"),
        ]);
        let response = run(
            &on,
            UpstreamError::Broken,
            preflight(b"http://127.0.0.1:5173"),
        );
        assert_eq!(response.status(), 403);
        let request_line = line(&response);
        assert!(
            request_line.ends_with("error=origin_not_allowed origin=http://127.0.0.1:5173"),
            "{request_line}"
        );
        let hint = Hints::new()
            .line(&response, Duration::ZERO)
            .expect("a hint");
        assert!(hint.contains("allows http://localhost:5173"), "{hint}");

        let forged = run(
            &on,
            UpstreamError::Broken,
            preflight(b"http://x status=200\tfal-proxy:"),
        );
        let forged_line = line(&forged);
        assert!(
            forged_line.ends_with("origin=http://x\\x20status=200\\x09fal-proxy:"),
            "{forged_line}"
        );
    }

    #[test]
    fn refused_host_is_named() {
        let hosts = proxy(&[
            ("FAL_KEY", "id:secret"),
            ("FAL_PROXY_ALLOWED_HOSTS", "localhost"),
        ]);
        let request = Request::post("/api/fal/proxy")
            .header("host", "rebind.example:3000")
            .header("x-fal-target-url", "https://fal.run/x")
            .body(Bytes::new())
            .unwrap();
        let response = run(&hosts, UpstreamError::Broken, request);
        assert!(
            line(&response).ends_with("error=host_not_allowed host=rebind.example:3000"),
            "{}",
            line(&response)
        );
    }

    #[test]
    fn unreachable_carries_its_cause_and_json_has_the_same_fields() {
        let key = "id:secret-value";
        for (format, cause) in [("text", Cause::Dns), ("json", Cause::Tls)] {
            let proxy = proxy(&[("FAL_KEY", key), ("FAL_PROXY_LOG_FORMAT", format)]);
            let request = Request::post("/api/fal/proxy")
                .header("x-fal-target-url", "https://fal.run/fal-ai/x?secret=q")
                .header("x-fal-user-key", "user:secret-value")
                .body(Bytes::new())
                .unwrap();
            let response = run(&proxy, UpstreamError::Unreachable(cause), request);
            assert_eq!(response.status(), 502);
            let line = line(&response);
            assert!(!line.contains("secret"), "{line}");
            if format == "text" {
                assert_eq!(
                    line,
                    "fal-proxy: method=POST target=fal.run/fal-ai/x status=502 duration_ms=0 bytes=0 error=upstream_unreachable cause=dns"
                );
            } else {
                let json: serde_json::Value = serde_json::from_str(&line).unwrap();
                assert_eq!(
                    json,
                    serde_json::json!({
                        "level": "info", "method": "POST", "target": "fal.run/fal-ai/x",
                        "status": 502, "duration_ms": 0, "bytes": 0,
                        "error": "upstream_unreachable", "cause": "tls",
                    })
                );
            }
        }
    }
}
