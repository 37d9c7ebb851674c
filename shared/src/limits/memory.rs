//! Counters in memory: the `memory` store, and the state a Durable Object
//! keeps for one identity.

use super::{Counted, CounterStore, Hit, StoreError};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Counters by store key, each with the second it expires at. Applies a
/// [`Hit`] the way the Redis script does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    entries: HashMap<String, (u64, u64)>,
    /// Entries at the last sweep of expired ones.
    swept_at: usize,
}

impl Counters {
    /// Charges `hit` if every counter has room; answers which, with counts.
    pub fn apply(&mut self, hit: &Hit) -> Counted {
        if self.entries.len() > 2 * self.swept_at.max(512) {
            self.sweep(hit.now);
        }
        let now = hit.now;
        let current = |entries: &HashMap<String, (u64, u64)>, key: &str| {
            entries
                .get(key)
                .filter(|(_, expires)| *expires > now)
                .map_or(0, |(count, _)| *count)
        };
        let mut counts: Vec<u64> = hit
            .keys
            .iter()
            .map(|key| current(&self.entries, key))
            .collect();
        let allowed = counts
            .iter()
            .zip(&hit.limits)
            .all(|(count, limit)| count.saturating_add(hit.cost) <= *limit);
        if allowed && hit.cost > 0 {
            for ((key, ttl), count) in hit.keys.iter().zip(&hit.ttls).zip(&mut counts) {
                *count += hit.cost;
                self.entries.insert(key.clone(), (*count, now + ttl));
            }
        }
        Counted { allowed, counts }
    }

    /// Drops every expired counter.
    pub fn sweep(&mut self, now: u64) {
        self.entries.retain(|_, (_, expires)| *expires > now);
        self.swept_at = self.entries.len();
    }

    /// The live counters as JSON (`{"key": [count, expires_at]}`), for a
    /// Durable Object's storage.
    pub fn to_json(&self) -> String {
        // By hand, as [`Hit::to_json`]: the keys are the proxy's own.
        let entries: Vec<String> = self
            .entries
            .iter()
            .map(|(key, (count, expires))| format!("\"{key}\":[{count},{expires}]"))
            .collect();
        format!("{{{}}}", entries.join(","))
    }

    /// Counters from [`Counters::to_json`]'s output; empty when unreadable.
    pub fn from_json(text: &str) -> Self {
        let mut counters = Self::default();
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(text.as_bytes()) {
            for (key, value) in map {
                if let Some([count, expires]) = value
                    .as_array()
                    .and_then(|pair| <&[serde_json::Value; 2]>::try_from(pair.as_slice()).ok())
                    && let (Some(count), Some(expires)) = (count.as_u64(), expires.as_u64())
                    && !key.contains(['"', '\\'])
                {
                    counters.entries.insert(key, (count, expires));
                }
            }
        }
        counters
    }
}

/// The `memory` store: exact within one process, and nothing more. On a
/// serverless platform each instance counts alone.
#[derive(Debug, Default)]
pub struct MemoryStore {
    counters: Mutex<Counters>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl CounterStore for MemoryStore {
    async fn hit(&self, hit: &Hit) -> Result<Counted, StoreError> {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(counters.apply(hit))
    }
}
