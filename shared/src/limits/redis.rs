//! The native targets' stores: Redis over the `redis` crate (one `EVALSHA`
//! round trip per hit on a multiplexed connection), and [`NativeStore`],
//! the one the settings choose.

use super::upstash::{ReqwestPost, STORE_TIMEOUT, counted};
use super::{
    Counted, CounterStore, Hit, MemoryStore, REDIS_SCRIPT, StoreError, StoreKind, UpstashStore,
};
use crate::config::{Config, ConfigError, vars};
use futures_util::lock::Mutex as AsyncMutex;
use redis::aio::MultiplexedConnection;
use std::fmt;

/// A Redis server shared by every instance. Connects on first use and
/// again after any failure; never shows its URL's credentials.
pub struct RedisStore {
    client: redis::Client,
    connection: AsyncMutex<Option<MultiplexedConnection>>,
    script: redis::Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RedisStore(<redacted>)")
    }
}

impl RedisStore {
    /// A store for `url` (`redis://` or `rediss://`); a URL the client
    /// cannot use is a configuration error naming the variable only.
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        // rediss:// uses rustls; the native targets use ring's provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = redis::Client::open(url).map_err(|_| {
            ConfigError::new(vars::RATE_STORE, "not a usable redis:// or rediss:// URL")
        })?;
        Ok(Self {
            client,
            connection: AsyncMutex::new(None),
            script: redis::Script::new(REDIS_SCRIPT),
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = tokio::time::timeout(
            STORE_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| StoreError::Unreachable)?
        .map_err(|_| StoreError::Unreachable)?;
        *slot = Some(connection.clone());
        Ok(connection)
    }
}

impl CounterStore for RedisStore {
    /// One deadline for the whole exchange, the wait for the shared
    /// connection included: while Redis is silent, concurrent requests must
    /// not queue behind each other's connection attempts.
    async fn hit(&self, hit: &Hit) -> Result<Counted, StoreError> {
        tokio::time::timeout(STORE_TIMEOUT, self.exchange(hit))
            .await
            .map_err(|_| StoreError::Unreachable)?
    }
}

impl RedisStore {
    async fn exchange(&self, hit: &Hit) -> Result<Counted, StoreError> {
        let mut connection = self.connection().await?;
        let mut invocation = self.script.prepare_invoke();
        for key in &hit.keys {
            invocation.key(key);
        }
        invocation.arg(hit.cost);
        for (limit, ttl) in hit.limits.iter().zip(&hit.ttls) {
            invocation.arg(*limit).arg(*ttl);
        }
        let answer = tokio::time::timeout(
            STORE_TIMEOUT,
            invocation.invoke_async::<Vec<u64>>(&mut connection),
        )
        .await;
        match answer {
            Ok(Ok(numbers)) => counted(numbers, hit.keys.len()),
            Ok(Err(error)) if !error.is_io_error() && !error.is_connection_dropped() => {
                Err(StoreError::Invalid)
            }
            _ => {
                // Reconnect next time.
                *self.connection.lock().await = None;
                Err(StoreError::Unreachable)
            }
        }
    }
}

/// The store of a native target (server, Vercel, Lambda): `memory`, Redis
/// or Upstash's REST API, as the settings say.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one value per process, built once and never moved"
)]
pub enum NativeStore {
    /// Counters in this process.
    Memory(MemoryStore),
    /// A Redis server.
    Redis(RedisStore),
    /// Upstash's REST API over reqwest.
    Upstash(UpstashStore<ReqwestPost>),
}

impl NativeStore {
    /// The store `config` asks for (memory when there is no limit). Fails
    /// on a store a native target cannot use (`durable-object`).
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        let Some(limits) = config.limits() else {
            return Ok(Self::Memory(MemoryStore::new()));
        };
        Ok(match limits.store() {
            StoreKind::Memory => Self::Memory(MemoryStore::new()),
            StoreKind::Redis { url } => Self::Redis(RedisStore::new(url)?),
            StoreKind::Upstash { url, token } => {
                let client = ReqwestPost::new().map_err(|_| {
                    ConfigError::new(vars::RATE_STORE, "the HTTP client could not be built")
                })?;
                Self::Upstash(UpstashStore::new(client, url, token))
            }
            StoreKind::DurableObject => {
                return Err(ConfigError::new(
                    vars::RATE_STORE,
                    "durable-object is the Cloudflare Worker's store; use memory, redis:// or https:// here",
                ));
            }
        })
    }
}

impl CounterStore for NativeStore {
    async fn hit(&self, hit: &Hit) -> Result<Counted, StoreError> {
        match self {
            Self::Memory(store) => store.hit(hit).await,
            Self::Redis(store) => store.hit(hit).await,
            Self::Upstash(store) => store.hit(hit).await,
        }
    }
}
