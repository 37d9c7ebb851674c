//! The provider's key set (JWKS): parsed, cached, and fetched again only
//! when it must be, through the target's [`KeySetSource`].

use super::verify::{Algorithm, Token, VerifyingKey};
use crate::error::ProxyError;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::lock::Mutex as AsyncMutex;
use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The largest key set a target reads; a larger one is a failed fetch.
pub const MAX_KEY_SET_BYTES: usize = 256 * 1024;

/// How long a target waits for the key set, whole. A slow provider then
/// costs a request this long at most, and only while no keys are cached.
pub const KEY_SET_TIMEOUT: Duration = Duration::from_secs(5);

/// How long keys are used without asking the provider, when its
/// `Cache-Control` says nothing; and the bounds put on what it says.
const DEFAULT_MAX_AGE: u64 = 10 * 60;
const MIN_MAX_AGE: u64 = 60;
const MAX_MAX_AGE: u64 = 24 * 60 * 60;

/// The least time between the starts of two fetches, for whatever reason (a
/// token with an unknown `kid`, stale keys, a failed fetch): a stream of
/// garbage `kid`s or a provider that is down costs at most one fetch per
/// interval. Longer than [`KEY_SET_TIMEOUT`]: the core only knows when an
/// attempt started, and one that timed out must not be retried at once.
pub(crate) const REFETCH_INTERVAL_SECS: u64 = 10;
const _: () = assert!(REFETCH_INTERVAL_SECS > KEY_SET_TIMEOUT.as_secs());

/// The most keys kept from one key set (providers publish two or three).
const MAX_KEYS: usize = 32;

/// A target's HTTP client, fetching a JWKS. Like `Upstream`, no `Send`
/// bound, so the Worker's JS-backed fetch fits.
pub trait KeySetSource {
    /// GETs `url` and returns a 200 response's body and `Cache-Control`.
    /// Implementations must not follow redirects, must give up after
    /// [`KEY_SET_TIMEOUT`], and must stop reading past [`MAX_KEY_SET_BYTES`].
    fn fetch_key_set(&self, url: &str)
    -> impl Future<Output = Result<KeySetDocument, KeySetError>>;

    /// Whether a request may wait for a fetch another request started.
    /// Workers may not: workerd cancels a request woken from another's
    /// context, so there concurrent requests that find no usable keys each
    /// fetch their own.
    fn shares_fetches(&self) -> bool {
        true
    }
}

/// A fetched key set, as the provider sent it.
#[derive(Debug, Clone)]
pub struct KeySetDocument {
    /// The JSON body.
    pub body: Bytes,
    /// The `Cache-Control` header, when there was one.
    pub cache_control: Option<String>,
}

/// Why a key set could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeySetError {
    /// Connecting or reading failed.
    #[error("the JWKS could not be fetched")]
    Unreachable,
    /// No complete answer within [`KEY_SET_TIMEOUT`].
    #[error("the JWKS did not arrive in time")]
    Timeout,
    /// An answer other than 200.
    #[error("the JWKS URL did not answer 200")]
    Status,
    /// Over [`MAX_KEY_SET_BYTES`].
    #[error("the JWKS is too large")]
    TooLarge,
    /// Not a JWKS with a usable signing key.
    #[error("the JWKS holds no usable key")]
    Invalid,
}

/// One verifying key of a key set and what it may verify.
struct Key {
    kid: Option<String>,
    /// The `alg` the key declares; `None`: any of its type's.
    alg: Option<Algorithm>,
    key: VerifyingKey,
}

/// A provider's signing keys. Symmetric (`oct`) keys and keys for
/// encryption are left out: a public key set must never verify HMAC.
pub(crate) struct KeySet {
    keys: Vec<Key>,
    /// Which set this is, in the order the cache stored them (0 until
    /// stored): a token is remembered as verified by one version only.
    version: u64,
}

impl KeySet {
    /// The usable signing keys of a JWKS document; an error when there are
    /// none. Keys of a kind or `alg` this proxy does not verify are skipped,
    /// so one odd key does not lose the others.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, KeySetError> {
        let document: Value = serde_json::from_slice(body).map_err(|_| KeySetError::Invalid)?;
        let listed = document
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(KeySetError::Invalid)?;
        let keys: Vec<Key> = listed
            .iter()
            .filter_map(Key::from_jwk)
            .take(MAX_KEYS)
            .collect();
        if keys.is_empty() {
            return Err(KeySetError::Invalid);
        }
        Ok(Self { keys, version: 0 })
    }

    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
    }

    /// The keys that may verify `token`: its `kid` if it names one, a type
    /// that fits its `alg`, and no other declared `alg`.
    pub(crate) fn candidates<'a>(
        &'a self,
        token: &'a Token<'_>,
    ) -> impl Iterator<Item = &'a VerifyingKey> + 'a {
        let alg = token.alg();
        self.keys
            .iter()
            .filter(move |key| {
                token
                    .kid()
                    .is_none_or(|kid| key.kid.as_deref() == Some(kid))
            })
            .filter(move |key| key.alg.is_none_or(|declared| declared == alg))
            .filter(move |key| key.key.fits(alg))
            .map(|key| &key.key)
    }
}

impl Key {
    /// A JWK (RFC 7517) as a verifying key: RSA, EC P-256/P-384 or OKP
    /// Ed25519, for signing (`use` absent or `sig`), with an `alg`, if any,
    /// that fits its type. Anything else is `None`.
    fn from_jwk(jwk: &Value) -> Option<Self> {
        let text = |name: &str| jwk.get(name).and_then(Value::as_str);
        let bytes = |name: &str| URL_SAFE_NO_PAD.decode(text(name)?).ok();
        if text("use").is_some_and(|usage| usage != "sig") {
            return None;
        }
        let key = match (text("kty")?, text("crv")) {
            ("RSA", _) => {
                let n = rsa::BoxedUint::from_be_slice_vartime(&bytes("n")?);
                let e = rsa::BoxedUint::from_be_slice_vartime(&bytes("e")?);
                VerifyingKey::Rsa(Box::new(rsa::PublicKey::new(n, e).ok()?))
            }
            ("EC", Some("P-256")) => VerifyingKey::P256(
                p256::ecdsa::VerifyingKey::from_sec1_bytes(&point(&bytes("x")?, &bytes("y")?, 32)?)
                    .ok()?,
            ),
            ("EC", Some("P-384")) => VerifyingKey::P384(
                p384::ecdsa::VerifyingKey::from_sec1_bytes(&point(&bytes("x")?, &bytes("y")?, 48)?)
                    .ok()?,
            ),
            ("OKP", Some("Ed25519")) => {
                let x: [u8; 32] = bytes("x")?.try_into().ok()?;
                VerifyingKey::Ed25519(ed25519_dalek::VerifyingKey::from_bytes(&x).ok()?)
            }
            _ => return None,
        };
        let alg = match jwk.get("alg") {
            None => None,
            Some(alg) => Some(Algorithm::from_name(alg.as_str()?)?),
        };
        if alg.is_some_and(|alg| !key.fits(alg)) {
            return None;
        }
        let kid = match jwk.get("kid") {
            None => None,
            Some(kid) => Some(kid.as_str()?.to_owned()),
        };
        Some(Self { kid, alg, key })
    }
}

/// An uncompressed SEC1 point from JWK coordinates of `size` bytes each.
fn point(x: &[u8], y: &[u8], size: usize) -> Option<Vec<u8>> {
    (x.len() == size && y.len() == size).then(|| [&[4][..], x, y].concat())
}

/// How long the provider lets its keys be used, within sane bounds.
fn max_age(cache_control: Option<&str>) -> u64 {
    let Some(value) = cache_control else {
        return DEFAULT_MAX_AGE;
    };
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return MIN_MAX_AGE;
        }
        if let Some(secs) = lower.strip_prefix("max-age=") {
            age = secs.trim_matches('"').parse::<u64>().ok();
        }
    }
    age.unwrap_or(DEFAULT_MAX_AGE)
        .clamp(MIN_MAX_AGE, MAX_MAX_AGE)
}

/// The key set of one JWKS URL, shared by every request of a process.
pub(crate) struct KeySetCache {
    url: String,
    state: Mutex<State>,
    /// Held by the request that fetches, so that (where a target allows it)
    /// concurrent requests that have no keys wait for that one fetch.
    fetching: AsyncMutex<()>,
}

#[derive(Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    fresh_until: u64,
    /// When the last fetch STARTED: an attempt counts against the interval
    /// from its start, whether it succeeds, fails, or is abandoned (its
    /// request dropped) halfway.
    last_attempt: Option<u64>,
    /// Fetches under way.
    in_flight: usize,
}

/// What a request does about keys, decided under the state lock.
enum Plan<'a> {
    Use(Arc<KeySet>),
    Unavailable,
    /// No keys, and another request is fetching them.
    Join,
    /// Fetch now; this request's attempt is already counted.
    Fetch(futures_util::lock::MutexGuard<'a, ()>),
}

/// One fetch under way; uncounted when it ends, however it ends.
struct InFlight<'a>(&'a KeySetCache);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight = state.in_flight.saturating_sub(1);
    }
}

impl fmt::Debug for KeySetCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySetCache")
            .field("url", &self.url)
            .finish()
    }
}

impl KeySetCache {
    pub(crate) fn new(url: String) -> Self {
        Self {
            url,
            state: Mutex::new(State::default()),
            fetching: AsyncMutex::new(()),
        }
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The version of the key set in use, while it is fresh at `now`.
    pub(crate) fn fresh_version(&self, now: u64) -> Option<u64> {
        let state = self.state();
        let keys = state.keys.as_ref()?;
        (now < state.fresh_until).then_some(keys.version)
    }

    fn plan(&self, kid: Option<&str>, now: u64) -> Plan<'_> {
        let mut state = self.state();
        let cooling = state
            .last_attempt
            .is_some_and(|at| now < at.saturating_add(REFETCH_INTERVAL_SECS));
        match &state.keys {
            Some(keys) => {
                let stale = now >= state.fresh_until;
                let unknown = kid.is_some_and(|kid| !keys.has_kid(kid));
                // Within the interval (a fetch under way always is), stale
                // keys are used and an unknown `kid` is simply refused.
                if !(stale || unknown) || cooling || state.in_flight > 0 {
                    return Plan::Use(Arc::clone(keys));
                }
            }
            None if state.in_flight > 0 => return Plan::Join,
            None if cooling => return Plan::Unavailable,
            None => {}
        }
        // Taken under the state lock, so a request that sees this fetch in
        // flight finds the lock held until the state is updated.
        let Some(turn) = self.fetching.try_lock() else {
            return Plan::Join;
        };
        state.in_flight += 1;
        state.last_attempt = Some(now);
        Plan::Fetch(turn)
    }

    /// The keys to verify a token with `kid` at `now`: the cached ones, or
    /// freshly fetched ones when they are missing, stale or lack `kid` (at
    /// most one fetch per [`REFETCH_INTERVAL_SECS`], counted from its
    /// start). A failed fetch keeps the last good keys; with none, the
    /// answer is `AuthUnavailable`.
    pub(crate) async fn keys<S: KeySetSource>(
        &self,
        source: &S,
        kid: Option<&str>,
        now: u64,
    ) -> Result<Arc<KeySet>, ProxyError> {
        match self.plan(kid, now) {
            Plan::Use(keys) => Ok(keys),
            Plan::Unavailable => Err(ProxyError::AuthUnavailable),
            Plan::Join if source.shares_fetches() => {
                drop(self.fetching.lock().await);
                self.state().keys.clone().ok_or(ProxyError::AuthUnavailable)
            }
            // A target whose requests cannot wait for each other (Workers):
            // with no keys at all, this request fetches its own.
            Plan::Join => {
                self.state().in_flight += 1;
                let _in_flight = InFlight(self);
                self.fetch(source, now).await
            }
            Plan::Fetch(_turn) => {
                let _in_flight = InFlight(self);
                self.fetch(source, now).await
            }
        }
    }

    async fn fetch<S: KeySetSource>(
        &self,
        source: &S,
        now: u64,
    ) -> Result<Arc<KeySet>, ProxyError> {
        let fetched = source.fetch_key_set(&self.url).await.and_then(|document| {
            let keys = KeySet::parse(&document.body)?;
            Ok((keys, max_age(document.cache_control.as_deref())))
        });
        let mut state = self.state();
        if let Ok((mut keys, max_age)) = fetched {
            keys.version = state.keys.as_ref().map_or(0, |kept| kept.version) + 1;
            state.keys = Some(Arc::new(keys));
            state.fresh_until = now.saturating_add(max_age);
        }
        state.keys.clone().ok_or(ProxyError::AuthUnavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_bounded() {
        assert_eq!(max_age(None), DEFAULT_MAX_AGE);
        assert_eq!(max_age(Some("public, max-age=3600")), 3600);
        assert_eq!(max_age(Some("max-age=5")), MIN_MAX_AGE);
        assert_eq!(max_age(Some("max-age=99999999")), MAX_MAX_AGE);
        assert_eq!(max_age(Some("no-store")), MIN_MAX_AGE);
        assert_eq!(max_age(Some("max-age=600, no-cache")), MIN_MAX_AGE);
        assert_eq!(max_age(Some("max-age=garbage")), DEFAULT_MAX_AGE);
    }

    #[test]
    fn key_sets_without_a_usable_signing_key_are_refused() {
        for body in [
            &b"not json"[..],
            br#"{"keys": []}"#,
            br#"{"keys": "x"}"#,
            br#"[{"kty":"oct","k":"c2VjcmV0"}]"#,
            br#"{"keys": [{"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}"#,
            br#"{"keys": [{"kty":"EC","crv":"P-521","x":"AA","y":"AA"}]}"#,
        ] {
            assert!(
                KeySet::parse(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
