//! The Worker's rate stores: `memory` (per isolate), Upstash's REST API
//! over `worker::Fetch`, and a Durable Object, one per identity, whose
//! single thread applies each hit atomically and keeps the counters in its
//! storage.

use fal_proxy_core::{
    Config, ConfigError, Counted, CounterStore, Counters, Hit, MAX_ANSWER_BYTES, MemoryStore,
    PostJson, STORE_TIMEOUT, StoreError, StoreKind, UpstashStore, vars,
};
use futures_util::future::{Either, select};
use std::pin::pin;
use worker::wasm_bindgen::JsValue;
use worker::wasm_bindgen_futures::JsFuture;
use worker::{
    Delay, DurableObject, Env, Fetch, ObjectNamespace, Request, Response, State, durable_object,
    js_sys, wasm_bindgen, web_sys,
};

/// The Durable Object binding `FAL_PROXY_RATE_STORE=durable-object` uses
/// (declared in wrangler.toml, class [`RateLimiter`]).
pub const BINDING: &str = "FAL_PROXY_RATE_LIMITER";

/// The storage key of a limiter's counters.
const COUNTERS: &str = "counters";

/// The store the settings name.
pub enum WorkerStore {
    /// Counters in this isolate.
    Memory(MemoryStore),
    /// Upstash's REST API.
    Upstash(UpstashStore<FetchPost>),
    /// One [`RateLimiter`] per identity.
    DurableObject(ObjectNamespace),
}

impl std::fmt::Debug for WorkerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Memory(_) => "WorkerStore::Memory",
            Self::Upstash(_) => "WorkerStore::Upstash",
            Self::DurableObject(_) => "WorkerStore::DurableObject",
        })
    }
}

impl WorkerStore {
    /// The store `config` asks for; a Redis URL or a missing binding is a
    /// bad setting (a Worker cannot open a Redis connection).
    pub fn new(config: &Config, env: &Env) -> Result<Self, ConfigError> {
        let Some(limits) = config.limits() else {
            return Ok(Self::Memory(MemoryStore::new()));
        };
        match limits.store() {
            StoreKind::Memory => Ok(Self::Memory(MemoryStore::new())),
            StoreKind::Upstash { url, token } => {
                Ok(Self::Upstash(UpstashStore::new(FetchPost, url, token)))
            }
            StoreKind::DurableObject => env
                .durable_object(BINDING)
                .map(Self::DurableObject)
                .map_err(|_| {
                    ConfigError {
                        var: vars::RATE_STORE,
                        reason: format!(
                            "durable-object needs the {BINDING} Durable Object binding in wrangler.toml"
                        ),
                    }
                }),
            StoreKind::Redis { .. } => Err(ConfigError {
                var: vars::RATE_STORE,
                reason: "a Worker cannot reach redis:// directly: use Upstash's https:// REST URL or durable-object".to_owned(),
            }),
        }
    }
}

impl CounterStore for WorkerStore {
    async fn hit(&self, hit: &Hit) -> Result<Counted, StoreError> {
        match self {
            Self::Memory(store) => store.hit(hit).await,
            Self::Upstash(store) => store.hit(hit).await,
            Self::DurableObject(namespace) => durable_object_hit(namespace, hit).await,
        }
    }
}

/// Sends `hit` to its identity's limiter.
async fn durable_object_hit(namespace: &ObjectNamespace, hit: &Hit) -> Result<Counted, StoreError> {
    let identity = hit.identity().ok_or(StoreError::Invalid)?;
    let stub = namespace
        .get_by_name(identity)
        .map_err(|_| StoreError::Unreachable)?;
    let request = post("https://rate-limiter/hit", None, hit.to_json())?;
    let body = exchange(request, Some(&stub)).await?;
    Counted::from_json(&body, hit.keys.len())
}

/// Sends `request` to a Durable Object's `stub`, or with the runtime's
/// `fetch`, and reads a 200's body, all within [`STORE_TIMEOUT`].
async fn exchange(request: Request, stub: Option<&worker::Stub>) -> Result<Vec<u8>, StoreError> {
    let exchange = async {
        let response = match stub {
            Some(stub) => stub.fetch_with_request(request).await,
            None => Fetch::Request(request).send().await,
        }
        .map_err(|_| StoreError::Unreachable)?;
        read_body(response).await
    };
    let exchange = pin!(exchange);
    let deadline = pin!(Delay::from(STORE_TIMEOUT));
    match select(exchange, deadline).await {
        Either::Left((answer, _)) => answer,
        Either::Right(((), _)) => Err(StoreError::Unreachable),
    }
}

/// A POST of `body`, with a bearer token when given, redirects not followed.
fn post(url: &str, token: Option<&str>, body: String) -> Result<Request, StoreError> {
    let headers = web_sys::Headers::new().map_err(|_| StoreError::Unreachable)?;
    headers
        .set("content-type", "application/json")
        .map_err(|_| StoreError::Unreachable)?;
    if let Some(token) = token {
        headers
            .set("authorization", &format!("Bearer {token}"))
            .map_err(|_| StoreError::Unreachable)?;
    }
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_redirect(web_sys::RequestRedirect::Manual);
    init.set_headers(&headers);
    init.set_body(&JsValue::from_str(&body));
    web_sys::Request::new_with_str_and_init(url, &init)
        .map(Request::from)
        .map_err(|_| StoreError::Unreachable)
}

/// A response's body, at most [`MAX_ANSWER_BYTES`]. Read whole by the
/// runtime (store answers are a few bytes): no Rust stream code in the wasm.
async fn read_body(response: Response) -> Result<Vec<u8>, StoreError> {
    let response = web_sys::Response::from(response);
    let buffer = response
        .array_buffer()
        .map_err(|_| StoreError::Unreachable)?;
    let buffer = JsFuture::from(buffer)
        .await
        .map_err(|_| StoreError::Unreachable)?;
    let bytes = js_sys::Uint8Array::new(&buffer);
    if usize::try_from(bytes.length()).map_or(true, |length| length > MAX_ANSWER_BYTES) {
        return Err(StoreError::Invalid);
    }
    Ok(bytes.to_vec())
}

/// The Worker's [`PostJson`]: the runtime's `fetch`, redirects not followed.
#[derive(Debug, Clone, Copy)]
pub struct FetchPost;

impl PostJson for FetchPost {
    async fn post_json(
        &self,
        url: &str,
        token: &str,
        body: String,
    ) -> Result<bytes::Bytes, StoreError> {
        // The REST API answers errors as JSON with their own status: any body is read.
        Ok(exchange(post(url, Some(token), body)?, None).await?.into())
    }
}

/// One identity's counters. Workers send it a [`Hit`] as JSON; it answers
/// [`Counted`] as JSON. A Durable Object handles one event at a time and
/// storage reads and writes do not let another in between, so each hit is
/// applied atomically; the counters survive eviction in its storage.
#[durable_object(fetch)]
pub struct RateLimiter {
    state: State,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimiter")
    }
}

impl DurableObject for RateLimiter {
    fn new(state: State, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&self, mut request: Request) -> worker::Result<Response> {
        let text = request.text().await?;
        let Some(hit) = Hit::from_json(&text) else {
            return Response::error("bad hit", 400);
        };
        // Raw values (a JSON string), not serde: the wasm stays small.
        let storage = self.state.storage();
        let saved = storage.get_multiple(vec![COUNTERS]).await?;
        let mut counters = saved
            .get(&JsValue::from_str(COUNTERS))
            .as_string()
            .map(|saved| Counters::from_json(&saved))
            .unwrap_or_default();
        counters.sweep(hit.now);
        let counted = counters.apply(&hit);
        if counted.allowed {
            storage
                .put_raw(COUNTERS, JsValue::from_str(&counters.to_json()))
                .await?;
        }
        Response::ok(counted.to_json())
    }
}
