//! Upstash's Redis REST API as a store: one `EVAL` of the Redis script per
//! hit, posted as JSON through whatever HTTP client the target has.

use super::{Counted, CounterStore, Hit, REDIS_SCRIPT, StoreError};
use bytes::Bytes;
use std::fmt;
use std::future::Future;
use std::time::Duration;

/// How long a target waits for a store's answer, whole.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest answer a target reads from a REST store.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A target's HTTP client, posting one JSON body. No `Send` bound.
pub trait PostJson {
    /// POSTs `body` to `url` with `Authorization: Bearer <token>` and returns
    /// the response body, whatever its status (the REST API answers errors
    /// as JSON). Must not follow redirects, must give up after
    /// [`STORE_TIMEOUT`], and must never log `token`.
    fn post_json(
        &self,
        url: &str,
        token: &str,
        body: String,
    ) -> impl Future<Output = Result<Bytes, StoreError>>;
}

/// The Upstash REST store over a target's [`PostJson`] client.
#[derive(Clone)]
pub struct UpstashStore<C> {
    client: C,
    url: String,
    token: String,
}

impl<C> fmt::Debug for UpstashStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstashStore")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl<C> UpstashStore<C> {
    /// A store at `url` (already validated by the configuration).
    pub fn new(client: C, url: &str, token: &str) -> Self {
        Self {
            client,
            url: url.to_owned(),
            token: token.to_owned(),
        }
    }
}

/// The REST command for `hit`: `["EVAL", script, n, keys.., cost, limit, ttl, ..]`.
pub(crate) fn command(hit: &Hit) -> String {
    let mut command: Vec<String> = vec![
        "EVAL".to_owned(),
        REDIS_SCRIPT.to_owned(),
        hit.keys.len().to_string(),
    ];
    command.extend(hit.keys.iter().cloned());
    command.push(hit.cost.to_string());
    for (limit, ttl) in hit.limits.iter().zip(&hit.ttls) {
        command.push(limit.to_string());
        command.push(ttl.to_string());
    }
    serde_json::Value::from(command).to_string()
}

/// The script's answer in a REST reply: `{"result": [allowed, count..]}`.
pub(crate) fn parse_answer(body: &[u8], windows: usize) -> Result<Counted, StoreError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| StoreError::Invalid)?;
    let result = value
        .get("result")
        .and_then(serde_json::Value::as_array)
        .ok_or(StoreError::Invalid)?;
    let numbers: Option<Vec<u64>> = result.iter().map(serde_json::Value::as_u64).collect();
    counted(numbers.ok_or(StoreError::Invalid)?, windows)
}

/// `[allowed, count..]` as a [`Counted`], checked against the window count.
pub(crate) fn counted(numbers: Vec<u64>, windows: usize) -> Result<Counted, StoreError> {
    match numbers.split_first() {
        Some((allowed, counts)) if counts.len() == windows && *allowed <= 1 => Ok(Counted {
            allowed: *allowed == 1,
            counts: counts.to_vec(),
        }),
        _ => Err(StoreError::Invalid),
    }
}

impl<C: PostJson> CounterStore for UpstashStore<C> {
    async fn hit(&self, hit: &Hit) -> Result<Counted, StoreError> {
        let body = self
            .client
            .post_json(&self.url, &self.token, command(hit))
            .await?;
        parse_answer(&body, hit.keys.len())
    }
}

/// The native targets' [`PostJson`]: a reqwest client of its own.
#[cfg(feature = "reqwest")]
#[derive(Debug, Clone)]
pub struct ReqwestPost {
    client: reqwest::Client,
}

#[cfg(feature = "reqwest")]
impl ReqwestPost {
    /// A client with no redirects and no proxy from the environment.
    pub fn new() -> Result<Self, StoreError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(STORE_TIMEOUT)
            .build()
            .map_err(|_| StoreError::Unreachable)?;
        Ok(Self { client })
    }
}

#[cfg(feature = "reqwest")]
impl PostJson for ReqwestPost {
    async fn post_json(&self, url: &str, token: &str, body: String) -> Result<Bytes, StoreError> {
        let response = self
            .client
            .post(url)
            .bearer_auth(token)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|_| StoreError::Unreachable)?;
        if response
            .content_length()
            .is_some_and(|length| length > MAX_ANSWER_BYTES as u64)
        {
            return Err(StoreError::Invalid);
        }
        let body = response
            .bytes()
            .await
            .map_err(|_| StoreError::Unreachable)?;
        if body.len() > MAX_ANSWER_BYTES {
            return Err(StoreError::Invalid);
        }
        Ok(body)
    }
}
