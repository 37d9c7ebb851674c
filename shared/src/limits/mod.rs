//! Rate limits and quotas per user, weighted by what each endpoint costs.
//!
//! With `FAL_PROXY_RATE_LIMIT` set (`10/min,200/day`), every request that
//! starts work or costs money (a run, a queue submission, a token mint, an
//! upload initiate) spends its endpoint's cost (`FAL_PROXY_ENDPOINT_COSTS`,
//! 1 otherwise) from every window of its identity: the verified user when
//! authentication is on, the client's address (IPv6 by /64) otherwise.
//! Queue status, status streams, results and cancels never count and are
//! never refused.
//!
//! Windows are fixed and aligned to the Unix epoch (a `min` window runs from
//! one whole minute to the next), so every instance agrees on them without
//! talking. The decision is made here, purely; the counters live in a
//! [`CounterStore`] the target provides, which applies one [`Hit`]
//! atomically: either every window has room for the cost and all are
//! charged, or none is and nothing is charged.

mod memory;
mod settings;
mod upstash;

#[cfg(feature = "redis")]
mod redis;

pub use memory::{Counters, MemoryStore};
pub use settings::{Failure, Limits, StoreKind, Window};
pub use upstash::{MAX_ANSWER_BYTES, PostJson, STORE_TIMEOUT, UpstashStore};

#[cfg(feature = "redis")]
pub use redis::{NativeStore, RedisStore};
#[cfg(feature = "reqwest")]
pub use upstash::ReqwestPost;

use crate::auth::Identity;
use crate::error::json_error;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::net::IpAddr;

/// The script a Redis store runs for one [`Hit`], atomically: `KEYS` are the
/// hit's counters, `ARGV` the cost then each counter's limit and lifetime in
/// seconds. Answers `{allowed, count...}` (the counts after charging when
/// allowed, as they stand when not).
pub const REDIS_SCRIPT: &str = r"local cost = tonumber(ARGV[1])
local counts = {}
local allowed = 1
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  counts[i] = count
  if count + cost > tonumber(ARGV[2 * i]) then allowed = 0 end
end
if allowed == 1 and cost > 0 then
  for i, key in ipairs(KEYS) do
    counts[i] = redis.call('INCRBY', key, cost)
    if counts[i] == cost then redis.call('EXPIRE', key, tonumber(ARGV[2 * i + 1])) end
  end
end
table.insert(counts, 1, allowed)
return counts
";

/// A counter store: applies one [`Hit`] atomically. Like `Upstream`, no
/// `Send` bound, so the Worker's JS-backed clients fit.
pub trait CounterStore {
    /// Charges `hit.cost` to every counter of `hit` if each has room, or
    /// charges nothing; answers which, with the counts.
    fn hit(&self, hit: &Hit) -> impl Future<Output = Result<Counted, StoreError>>;
}

/// One counted request, as a store sees it: a counter per window (already
/// keyed by identity and window), each with its limit and lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// One store key per window: `fal-proxy:rl:{<identity>}:<secs>:<index>`.
    pub keys: Vec<String>,
    /// Each window's limit.
    pub limits: Vec<u64>,
    /// Seconds until each window ends (at least 1): the counter's lifetime.
    pub ttls: Vec<u64>,
    /// What this request costs.
    pub cost: u64,
    /// Seconds since the Unix epoch, by the target's clock.
    pub now: u64,
}

impl Hit {
    /// The identity the hit counts for (the `{...}` of its keys): what a
    /// store that keeps one object per identity (a Durable Object) is named by.
    pub fn identity(&self) -> Option<&str> {
        let key = self.keys.first()?;
        let (_, rest) = key.split_once('{')?;
        rest.split_once('}').map(|(identity, _)| identity)
    }

    /// The hit as JSON, for a store reached by a message.
    pub fn to_json(&self) -> String {
        // By hand: keys are the proxy's own (`fal-proxy:rl:{ip:..}:60:1`),
        // and serde's number formatting would weigh on the Worker's wasm.
        let keys: Vec<String> = self.keys.iter().map(|key| format!("\"{key}\"")).collect();
        format!(
            "{{\"keys\":[{}],\"limits\":{},\"ttls\":{},\"cost\":{},\"now\":{}}}",
            keys.join(","),
            numbers_json(&self.limits),
            numbers_json(&self.ttls),
            self.cost,
            self.now
        )
    }

    /// A hit from [`Hit::to_json`]'s output; `None` when malformed.
    pub fn from_json(text: &str) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_slice(text.as_bytes()).ok()?;
        let numbers = |name: &str| -> Option<Vec<u64>> {
            value
                .get(name)?
                .as_array()?
                .iter()
                .map(serde_json::Value::as_u64)
                .collect()
        };
        let keys: Vec<String> = value
            .get("keys")?
            .as_array()?
            .iter()
            .map(|key| {
                key.as_str()
                    .filter(|key| !key.contains(['"', '\\']))
                    .map(str::to_owned)
            })
            .collect::<Option<_>>()?;
        let hit = Self {
            limits: numbers("limits")?,
            ttls: numbers("ttls")?,
            cost: value.get("cost")?.as_u64()?,
            now: value.get("now")?.as_u64()?,
            keys,
        };
        (hit.limits.len() == hit.keys.len() && hit.ttls.len() == hit.keys.len()).then_some(hit)
    }
}

/// What a store did with a [`Hit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// Whether every window had room (and all were charged).
    pub allowed: bool,
    /// Each window's count: after charging when allowed, as it stands when not.
    pub counts: Vec<u64>,
}

impl Counted {
    /// `{"result": [allowed, count..]}`: the Redis script's answer as
    /// Upstash's REST API sends it.
    pub fn to_json(&self) -> String {
        let mut numbers = vec![u64::from(self.allowed)];
        numbers.extend(&self.counts);
        format!("{{\"result\":{}}}", numbers_json(&numbers))
    }

    /// [`Counted::to_json`]'s output, checked against `windows`.
    pub fn from_json(body: &[u8], windows: usize) -> Result<Self, StoreError> {
        upstash::parse_answer(body, windows)
    }
}

/// `[1,2,3]`.
fn numbers_json(numbers: &[u64]) -> String {
    let items: Vec<String> = numbers.iter().map(u64::to_string).collect();
    format!("[{}]", items.join(","))
}

/// Why a store could not answer. Never carries a URL or a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached, or did not answer in time.
    #[error("the rate store could not be reached")]
    Unreachable,
    /// The store answered something other than the script's result.
    #[error("the rate store answered unexpectedly")]
    Invalid,
}

/// What a counted request was told, kept for its response's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RateNote {
    policy: HeaderValue,
    limit: HeaderValue,
    /// Seconds until the request could pass, when it was refused.
    retry_after: Option<u64>,
    /// The window that refused it, as configured (`10/min`).
    refused_by: Option<String>,
}

/// The `RateLimit-Policy` header (draft-ietf-httpapi-ratelimit-headers).
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` header (draft-ietf-httpapi-ratelimit-headers).
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

impl RateNote {
    /// The headers every counted response carries.
    pub(crate) fn decorate(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY, self.policy.clone());
        headers.insert(RATELIMIT, self.limit.clone());
    }

    /// Whether the request was refused.
    pub(crate) fn refused(&self) -> bool {
        self.retry_after.is_some()
    }

    /// The 429 of a refused request: fal's error shape, `Retry-After` and
    /// the rate-limit headers.
    pub(crate) fn refusal(&self) -> http::Response<bytes::Bytes> {
        let after = self.retry_after.unwrap_or(1);
        let window = self.refused_by.as_deref().unwrap_or("rate");
        let detail = format!(
            "Rate limit reached ({window}): try again in {after} second{}.",
            if after == 1 { "" } else { "s" }
        );
        let mut response = json_error(StatusCode::TOO_MANY_REQUESTS, &detail, "rate_limited");
        let headers = response.headers_mut();
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(after));
        self.decorate(headers);
        response
    }
}

/// What a request spends: nothing (a poll of a submitted request), or its
/// endpoint's cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Charge {
    /// Never counted, never refused.
    Free,
    /// Counted with this many units of this endpoint.
    Cost(u64),
}

/// The queue's per-request paths: `owner/name/requests/<id>` (GET, HEAD:
/// the result), `.../status`, `.../status/stream` (GET, HEAD) and
/// `.../cancel` (PUT). Anything else on any host starts work or may.
fn is_queue_poll(method: &Method, host: &str, path: &str) -> bool {
    if host != "queue.fal.run" || path.contains(['%', '\\']) {
        return false;
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let [owner, name, "requests", id, rest @ ..] = segments.as_slice() else {
        return false;
    };
    if [owner, name, id].iter().any(|part| part.is_empty()) {
        return false;
    }
    match rest {
        [] | ["status"] | ["status", "stream"] => *method == Method::GET || *method == Method::HEAD,
        ["cancel"] => *method == Method::PUT,
        _ => false,
    }
}

/// The endpoint a cost pattern is matched against: the app path of a run
/// or a submission, lower-cased, empty segments dropped, without a
/// trailing `/stream`. `None` when the path is encoded in a way fal could
/// read differently (then the highest cost applies).
fn endpoint_for_cost(path: &str) -> Option<String> {
    // Only the characters fal app ids use (as the endpoint allow-list
    // demands): `;`, `@`, `:`, `%`, `\` and the like could name the same
    // app to a router behind fal, so such a path pays the highest cost.
    let plain = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~'));
    if !plain {
        return None;
    }
    let lowered = path.to_ascii_lowercase();
    let segments: Vec<&str> = lowered.split('/').filter(|s| !s.is_empty()).collect();
    if segments
        .iter()
        .any(|segment| *segment == "." || *segment == "..")
    {
        return None;
    }
    let mut endpoint = segments.join("/");
    if let Some(streamless) = endpoint.strip_suffix("/stream") {
        endpoint = streamless.to_owned();
    }
    Some(endpoint)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The identity a request is counted under: the verified user, else the
/// client's address (IPv6 by its /64; an IPv4-mapped address as IPv4), else
/// one shared bucket for requests whose address the platform did not give.
pub(crate) fn identity_key(identity: Option<&Identity>, client_ip: Option<IpAddr>) -> String {
    if let Some(identity) = identity {
        let digest = Sha256::new()
            .chain_update(b"fal-proxy rate\0")
            .chain_update(identity.subject().as_bytes())
            .finalize();
        let mut key = String::with_capacity(34);
        key.push_str("u:");
        for byte in &digest[..16] {
            key.push(char::from(HEX[usize::from(byte >> 4)]));
            key.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        return key;
    }
    match client_ip.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => format!("ip:{v4}"),
        Some(IpAddr::V6(v6)) => {
            // The /64 prefix, in hex by hand (Ipv6Addr's Display is big in wasm).
            let [a, b, c, d, ..] = v6.segments();
            format!("ip:{a:x}:{b:x}:{c:x}:{d:x}::/64")
        }
        None => "ip:unknown".to_owned(),
    }
}

impl Limits {
    /// What a request to `host` `path` with `method` spends.
    pub(crate) fn charge(&self, method: &Method, host: &str, path: &str) -> Charge {
        if is_queue_poll(method, host, path) {
            return Charge::Free;
        }
        if host != "fal.run" && host != "queue.fal.run" {
            // Token mints, upload initiates, operator-added URLs.
            return Charge::Cost(1);
        }
        match endpoint_for_cost(path) {
            Some(endpoint) => Charge::Cost(self.cost_of(&endpoint)),
            None => Charge::Cost(self.max_cost()),
        }
    }

    /// The hit a counted request of `identity` at `now` makes.
    pub(crate) fn hit(&self, identity: &str, cost: u64, now: u64) -> Hit {
        let mut hit = Hit {
            keys: Vec::with_capacity(self.windows.len()),
            limits: Vec::with_capacity(self.windows.len()),
            ttls: Vec::with_capacity(self.windows.len()),
            cost,
            now,
        };
        for window in &self.windows {
            let index = now / window.secs;
            hit.keys.push(format!(
                "fal-proxy:rl:{{{identity}}}:{}:{index}",
                window.secs
            ));
            hit.limits.push(window.limit);
            hit.ttls.push(window.remaining(now));
        }
        hit
    }

    /// The headers and, when refused, the retry time of a store's answer.
    pub(crate) fn note(&self, hit: &Hit, counted: &Counted) -> RateNote {
        let mut policy = Vec::new();
        let mut limit = Vec::new();
        let mut retry_after: Option<u64> = None;
        let mut refused_by = None;
        for (i, window) in self.windows.iter().enumerate() {
            let count = counted.counts.get(i).copied().unwrap_or(window.limit);
            let reset = window.remaining(hit.now);
            let name = window.label();
            policy.push(format!("\"{name}\";q={};w={}", window.limit, window.secs));
            limit.push(format!(
                "\"{name}\";r={};t={reset}",
                window.limit.saturating_sub(count)
            ));
            if !counted.allowed
                && count.saturating_add(hit.cost) > window.limit
                && retry_after.is_none_or(|after| reset > after)
            {
                retry_after = Some(reset);
                refused_by = Some(name);
            }
        }
        if !counted.allowed && retry_after.is_none() {
            // A store that refused yet reported room: wait out the shortest window.
            retry_after = Some(
                self.windows
                    .iter()
                    .map(|w| w.remaining(hit.now))
                    .min()
                    .unwrap_or(1),
            );
        }
        let header = |items: Vec<String>| {
            HeaderValue::try_from(items.join(", ")).unwrap_or_else(|_| HeaderValue::from_static(""))
        };
        RateNote {
            policy: header(policy),
            limit: header(limit),
            retry_after,
            refused_by,
        }
    }
}

/// The client address from a forwarding header the platform (or the
/// operator's own load balancer) sets: the last address of the last
/// `header` field, which is what the nearest trusted hop appended. `None`
/// when it is missing or not an address.
pub fn forwarded_client_ip(headers: &HeaderMap, header: &str) -> Option<IpAddr> {
    let value = headers.get_all(header).iter().next_back()?.to_str().ok()?;
    let last = value.rsplit(',').next()?.trim();
    parse_address(last)
}

/// An address as forwarding headers write it: bare, `[v6]`, `v4:port` or
/// `[v6]:port`.
fn parse_address(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    text.parse::<std::net::SocketAddr>()
        .ok()
        .map(|addr| addr.ip())
}

#[cfg(test)]
mod tests;
