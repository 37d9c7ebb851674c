//! The `FAL_PROXY_RATE_*` and `FAL_PROXY_ENDPOINT_COSTS` settings.

use crate::config::{ConfigError, list, vars};
use crate::pattern::Glob;
use std::fmt;

/// The longest window accepted: a year.
const MAX_WINDOW_SECS: u64 = 366 * 24 * 60 * 60;

/// One window of `FAL_PROXY_RATE_LIMIT`: `limit` units per `secs` seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub(crate) secs: u64,
    pub(crate) limit: u64,
    /// As written, normalised (`10/min`, `100/5min`).
    label: String,
}

impl Window {
    /// Parses `10/min`, `100/5min`, `3/s`, `50/h`, `200/day`.
    fn parse(item: &str) -> Option<Self> {
        let (limit, per) = item.split_once('/')?;
        let limit: u64 = limit.trim().parse().ok().filter(|&n| n > 0)?;
        let per = per.trim().to_ascii_lowercase();
        let digits = per.bytes().take_while(u8::is_ascii_digit).count();
        let (count, unit) = per.split_at(digits);
        let count: u64 = if count.is_empty() {
            1
        } else {
            count.parse().ok().filter(|&n| n > 0)?
        };
        let unit_secs = match unit {
            "s" => 1,
            "min" => 60,
            "h" => 60 * 60,
            "day" => 24 * 60 * 60,
            _ => return None,
        };
        let secs = count
            .checked_mul(unit_secs)
            .filter(|&s| s <= MAX_WINDOW_SECS)?;
        let label = if count == 1 {
            format!("{limit}/{unit}")
        } else {
            format!("{limit}/{count}{unit}")
        };
        Some(Self { secs, limit, label })
    }

    /// Seconds from `now` to the end of the window `now` falls in (1 to `secs`).
    pub(crate) fn remaining(&self, now: u64) -> u64 {
        self.secs - now % self.secs
    }

    /// The window as configured, also its policy name in the headers.
    pub(crate) fn label(&self) -> String {
        self.label.clone()
    }
}

/// Where the counters live (`FAL_PROXY_RATE_STORE`).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// In this process: exact within one process, per instance on
    /// serverless platforms.
    Memory,
    /// A Redis server (`redis://`, `rediss://`), shared by every instance.
    Redis {
        /// The URL, credentials included: never shown.
        url: String,
    },
    /// Upstash's Redis REST API (also Vercel KV).
    Upstash {
        /// The REST URL (no credentials in it).
        url: String,
        /// `FAL_PROXY_RATE_STORE_TOKEN`: never shown.
        token: String,
    },
    /// The Worker's Durable Object (`durable-object`).
    DurableObject,
}

impl fmt::Debug for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl StoreKind {
    /// The store for a log line: its kind and host, never a credential.
    pub fn describe(&self) -> String {
        let host = |url: &str| {
            url::Url::parse(url)
                .ok()
                .and_then(|url| {
                    let host = url.host_str()?.to_owned();
                    Some(match url.port() {
                        Some(port) => format!("{host}:{port}"),
                        None => host,
                    })
                })
                .unwrap_or_default()
        };
        match self {
            Self::Memory => "memory".to_owned(),
            Self::Redis { url } => format!("redis at {}", host(url)),
            Self::Upstash { url, .. } => format!("Upstash REST at {}", host(url)),
            Self::DurableObject => "durable object".to_owned(),
        }
    }
}

/// What happens when the store cannot answer (`FAL_PROXY_RATE_STORE_FAILURE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 503 `rate_store_unavailable`; nothing goes upstream.
    Closed,
    /// The request passes, uncounted.
    Open,
}

/// The rate-limit settings.
#[derive(Clone)]
pub struct Limits {
    pub(crate) windows: Vec<Window>,
    costs: Vec<(Glob, u64)>,
    store: StoreKind,
    failure: Failure,
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

impl Limits {
    /// Reads the settings; `None` when `FAL_PROXY_RATE_LIMIT` is unset
    /// (no limit), in which case the others must be unset too.
    pub(crate) fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(limit) = get(vars::RATE_LIMIT) else {
            for var in [
                vars::ENDPOINT_COSTS,
                vars::RATE_STORE,
                vars::RATE_STORE_TOKEN,
                vars::RATE_STORE_FAILURE,
            ] {
                if get(var).is_some() {
                    return Err(ConfigError::new(
                        var,
                        "is set but FAL_PROXY_RATE_LIMIT is not (no limit is in force)",
                    ));
                }
            }
            return Ok(None);
        };
        let mut windows: Vec<Window> = Vec::new();
        for item in list(Some(limit)) {
            let window = Window::parse(&item).ok_or_else(|| {
                ConfigError::new(
                    vars::RATE_LIMIT,
                    format!(
                        "{item:?} is not a window such as 10/min (units s, min, h, day; up to a year)"
                    ),
                )
            })?;
            if windows.iter().any(|other| other.secs == window.secs) {
                return Err(ConfigError::new(
                    vars::RATE_LIMIT,
                    format!("two windows of {} seconds", window.secs),
                ));
            }
            // Kept shortest first (an insertion: no sort code in the wasm).
            let at = windows
                .iter()
                .position(|other| other.secs > window.secs)
                .unwrap_or(windows.len());
            windows.insert(at, window);
        }
        let smallest = windows.iter().map(|w| w.limit).min().unwrap_or(0);

        let mut costs = Vec::new();
        for item in list(get(vars::ENDPOINT_COSTS)) {
            let bad = |reason: String| ConfigError::new(vars::ENDPOINT_COSTS, reason);
            let (pattern, cost) = item.split_once('=').ok_or_else(|| {
                bad(format!(
                    "{item:?} is not pattern=cost, such as fal-ai/kling-video/**=50"
                ))
            })?;
            let pattern = pattern.trim().trim_matches('/').to_ascii_lowercase();
            if pattern.is_empty() || pattern.contains(['?', '#', '%', '\\']) {
                return Err(bad(format!(
                    "{pattern:?} is not an endpoint pattern such as fal-ai/flux/**"
                )));
            }
            let cost: u64 = cost
                .trim()
                .parse()
                .map_err(|_| bad(format!("the cost of {pattern} is not a whole number")))?;
            if cost > smallest {
                return Err(bad(format!(
                    "{pattern} costs {cost}, more than the smallest limit ({smallest}): no request to it could ever pass"
                )));
            }
            costs.push((Glob::new(&pattern), cost));
        }

        let store = match get(vars::RATE_STORE) {
            None => StoreKind::Memory,
            Some(value) => parse_store(value.trim())?,
        };
        let token = get(vars::RATE_STORE_TOKEN);
        let store = match (store, token) {
            (StoreKind::Upstash { url, .. }, Some(token)) => StoreKind::Upstash {
                url,
                token: token.trim().to_owned(),
            },
            (StoreKind::Upstash { .. }, None) => {
                return Err(ConfigError::new(
                    vars::RATE_STORE_TOKEN,
                    "an https:// store (Upstash's REST API) needs its token",
                ));
            }
            (_, Some(_)) => {
                return Err(ConfigError::new(
                    vars::RATE_STORE_TOKEN,
                    "is set but FAL_PROXY_RATE_STORE is not an https:// REST store",
                ));
            }
            (store, None) => store,
        };
        let failure = match get(vars::RATE_STORE_FAILURE).map(|v| v.trim().to_ascii_lowercase()) {
            None => Failure::Closed,
            Some(value) if value == "closed" => Failure::Closed,
            Some(value) if value == "open" => Failure::Open,
            Some(_) => {
                return Err(ConfigError::new(
                    vars::RATE_STORE_FAILURE,
                    "expected closed or open",
                ));
            }
        };
        Ok(Some(Self {
            windows,
            costs,
            store,
            failure,
        }))
    }

    /// Where the counters live.
    pub fn store(&self) -> &StoreKind {
        &self.store
    }

    /// What happens when the store cannot answer.
    pub fn failure(&self) -> Failure {
        self.failure
    }

    /// The cost of `endpoint`: the first matching pattern's, else 1.
    pub(crate) fn cost_of(&self, endpoint: &str) -> u64 {
        self.costs
            .iter()
            .find(|(glob, _)| glob.matches(endpoint))
            .map_or(1, |(_, cost)| *cost)
    }

    /// The highest configured cost (at least 1): what a path that could be
    /// read two ways is charged.
    pub(crate) fn max_cost(&self) -> u64 {
        self.costs
            .iter()
            .map(|(_, cost)| *cost)
            .max()
            .unwrap_or(1)
            .max(1)
    }

    /// One line for the start-up summary. No credential.
    pub fn summary(&self) -> String {
        let windows: Vec<String> = self.windows.iter().map(Window::label).collect();
        let mut line = format!("{} per identity", windows.join(","));
        if !self.costs.is_empty() {
            let costs: Vec<String> = self
                .costs
                .iter()
                .map(|(glob, cost)| format!("{}={cost}", glob.as_str()))
                .collect();
            line.push_str(&format!(", costs {}", costs.join(",")));
        }
        line.push_str(&format!(", store {}", self.store.describe()));
        if self.failure == Failure::Open {
            line.push_str(", fail open");
        }
        line
    }
}

/// `memory`, `durable-object`, a `redis://`/`rediss://` URL or an
/// `https://` REST URL (plain `http://` only on a loopback host, for tests).
fn parse_store(value: &str) -> Result<StoreKind, ConfigError> {
    let bad = |reason: &str| ConfigError::new(vars::RATE_STORE, reason);
    match value.to_ascii_lowercase().as_str() {
        "memory" => return Ok(StoreKind::Memory),
        "durable-object" => return Ok(StoreKind::DurableObject),
        _ => {}
    }
    let expected =
        "expected memory, durable-object, a redis:// or rediss:// URL, or an https:// REST URL";
    let url = url::Url::parse(value).map_err(|_| bad(expected))?;
    let Some(host) = url.host() else {
        return Err(bad(expected));
    };
    let loopback = match host {
        url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    match url.scheme() {
        "redis" | "rediss" => {
            let db = url.path().trim_start_matches('/');
            if !db.is_empty() && db.parse::<u32>().is_err() {
                return Err(bad("a redis URL's path must be a database number"));
            }
            Ok(StoreKind::Redis {
                url: value.to_owned(),
            })
        }
        "https" | "http" => {
            if url.scheme() == "http" && !loopback {
                return Err(bad(
                    "a REST store must be https:// (plain http only on a loopback host)",
                ));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(bad(
                    "a REST store's URL must not hold credentials: put the token in FAL_PROXY_RATE_STORE_TOKEN",
                ));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(bad("a REST store's URL must not have a query or fragment"));
            }
            Ok(StoreKind::Upstash {
                url: url.as_str().trim_end_matches('/').to_owned(),
                token: String::new(),
            })
        }
        _ => Err(bad(expected)),
    }
}
