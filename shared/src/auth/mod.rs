//! App-user authentication: only the app's own signed-in users may spend
//! the key.
//!
//! With `FAL_PROXY_AUTH_JWKS_URL` and/or `FAL_PROXY_AUTH_JWT_SECRET` set,
//! every forwarded request must carry `Authorization: Bearer <jwt>` from the
//! app's auth provider (Supabase, Clerk, Auth0, Firebase, any OIDC
//! provider). The token is verified here, purely, given the keys and the
//! time ([`verify`]); the provider's key set is fetched by the target through
//! a [`KeySetSource`] and cached per process ([`jwks`]). The token is never
//! forwarded (the browser's `Authorization` never is) and never logged: the
//! log line carries only a short hash of the verified `sub`.

mod jwks;
mod verify;

pub use jwks::{KEY_SET_TIMEOUT, KeySetDocument, KeySetError, KeySetSource, MAX_KEY_SET_BYTES};

use crate::config::{ConfigError, list, vars};
use crate::error::ProxyError;
use http::{HeaderMap, header};
use jwks::KeySetCache;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use verify::{Rules, Token, Verified, VerifyingKey};

/// The longest bearer token accepted, in bytes. Provider tokens are 1-2 KB;
/// this bounds the work an anonymous caller can ask for.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The shortest HMAC secret accepted, in bytes (RFC 7518 §3.2 asks for a
/// key at least as long as the hash: 32 bytes for HS256).
const MIN_SECRET_BYTES: usize = 32;

/// The verified user of a request: the token's `sub`.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    sub: String,
}

impl Identity {
    /// The `sub` claim as the provider issued it.
    pub fn subject(&self) -> &str {
        &self.sub
    }

    /// A short, stable tag for logs: the first 12 hex digits of
    /// SHA-256("fal-proxy user" ‖ sub). Providers' subjects are random ids,
    /// so the tag cannot be turned back into one, yet the same user has the
    /// same tag on every instance.
    pub fn tag(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"fal-proxy user\0")
            .chain_update(self.sub.as_bytes())
            .finalize();
        digest[..6]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity(user={})", self.tag())
    }
}

/// How many verified tokens are remembered; past it the memory starts over.
const MAX_VERIFIED_TOKENS: usize = 4096;

/// The authentication settings and, with a JWKS, its cache. Cheap to clone:
/// clones share the caches.
#[derive(Clone)]
pub(crate) struct Auth {
    rules: Arc<Rules>,
    secret: Option<Arc<VerifyingKey>>,
    jwks: Option<Arc<KeySetCache>>,
    verified: Arc<Mutex<HashMap<[u8; 32], Remembered>>>,
}

/// A token verified before (by its SHA-256): a browser sends the same token
/// with every request until it expires, and a signature check costs 0.1 to
/// 1 ms, so each token is verified once per process.
struct Remembered {
    verified: Verified,
    /// The key set version it was verified with; `None` for HMAC.
    version: Option<u64>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("jwks_url", &self.jwks.as_ref().map(|cache| cache.url()))
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("issuers", &self.rules.issuers)
            .field("audiences", &self.rules.audiences)
            .finish()
    }
}

impl Auth {
    /// Reads the `FAL_PROXY_AUTH_*` settings; `None` when neither a JWKS URL
    /// nor a secret is set (authentication off).
    pub(crate) fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let jwks_url = get(vars::AUTH_JWKS_URL)
            .map(|value| parse_jwks_url(value.trim()))
            .transpose()?;
        let secret = match get(vars::AUTH_JWT_SECRET) {
            None => None,
            Some(secret) if secret.len() < MIN_SECRET_BYTES => {
                return Err(ConfigError::new(
                    vars::AUTH_JWT_SECRET,
                    format!("must be at least {MIN_SECRET_BYTES} bytes"),
                ));
            }
            Some(secret) => Some(Arc::new(VerifyingKey::Hmac(secret.into_bytes()))),
        };
        let issuers = list(get(vars::AUTH_ISSUER));
        let audiences = list(get(vars::AUTH_AUDIENCE));
        if jwks_url.is_none() && secret.is_none() {
            if !issuers.is_empty() || !audiences.is_empty() {
                let var = if issuers.is_empty() {
                    vars::AUTH_AUDIENCE
                } else {
                    vars::AUTH_ISSUER
                };
                return Err(ConfigError::new(
                    var,
                    "is set but authentication is off: set FAL_PROXY_AUTH_JWKS_URL or FAL_PROXY_AUTH_JWT_SECRET",
                ));
            }
            return Ok(None);
        }
        Ok(Some(Self {
            rules: Arc::new(Rules { issuers, audiences }),
            secret,
            jwks: jwks_url.map(|url| Arc::new(KeySetCache::new(url))),
            verified: Arc::default(),
        }))
    }

    /// One line for the start-up summary. No secret.
    pub(crate) fn summary(&self) -> String {
        let mut sources = Vec::new();
        if let Some(cache) = &self.jwks {
            sources.push(format!("JWKS {}", cache.url()));
        }
        if self.secret.is_some() {
            sources.push("HMAC secret".to_owned());
        }
        let mut line = format!("bearer token required ({})", sources.join(" + "));
        if !self.rules.issuers.is_empty() {
            line.push_str(&format!(", issuer {}", self.rules.issuers.join("|")));
        }
        if !self.rules.audiences.is_empty() {
            line.push_str(&format!(", audience {}", self.rules.audiences.join("|")));
        }
        line
    }

    /// Verifies `token` at `now` (seconds since the Unix epoch), fetching
    /// the provider's keys through `source` when they are missing, stale, or
    /// lack the token's `kid`. Never waits on a JWKS fetch longer than the
    /// source's own deadline.
    pub(crate) async fn authenticate<S: KeySetSource>(
        &self,
        bearer: &Bearer,
        now: u64,
        source: &S,
    ) -> Result<Identity, ProxyError> {
        let digest: [u8; 32] = Sha256::digest(bearer.0.as_bytes()).into();
        if let Some(identity) = self.remembered(&digest, now) {
            return Ok(identity);
        }
        let token = Token::parse(&bearer.0).ok_or(ProxyError::Unauthenticated)?;
        let (verified, version) = if token.is_hmac() {
            let secret = self.secret.as_ref().ok_or(ProxyError::Unauthenticated)?;
            let verified = verify::check(&token, [secret.as_ref()], &self.rules, now)?;
            (verified, None)
        } else {
            let cache = self.jwks.as_ref().ok_or(ProxyError::Unauthenticated)?;
            let keys = cache.keys(source, token.kid(), now).await?;
            let verified = verify::check(&token, keys.candidates(&token), &self.rules, now)?;
            (verified, cache.fresh_version(now))
        };
        let identity = verified.identity.clone();
        let mut memory = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if memory.len() >= MAX_VERIFIED_TOKENS {
            memory.clear();
        }
        memory.insert(digest, Remembered { verified, version });
        Ok(identity)
    }

    /// The user of a token verified before, while its claims still hold at
    /// `now` and (for a JWKS token) the key set it was verified with is
    /// still the one in use and fresh.
    fn remembered(&self, digest: &[u8; 32], now: u64) -> Option<Identity> {
        let memory = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = memory.get(digest)?;
        let holds = (entry.verified.from..entry.verified.until).contains(&now);
        let same_keys = match entry.version {
            None => true,
            Some(version) => {
                self.jwks
                    .as_ref()
                    .and_then(|cache| cache.fresh_version(now))
                    == Some(version)
            }
        };
        (holds && same_keys).then(|| entry.verified.identity.clone())
    }
}

/// A bearer token as the browser sent it. `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct Bearer(String);

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bearer(<redacted>)")
    }
}

/// The token of the request's one `Authorization: Bearer <token>` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Bearer, ProxyError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(ProxyError::Unauthenticated);
    };
    let value = value.to_str().map_err(|_| ProxyError::Unauthenticated)?;
    let (scheme, token) = value.split_once(' ').ok_or(ProxyError::Unauthenticated)?;
    let token = token.trim();
    let plausible = scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && token.len() <= MAX_TOKEN_BYTES
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !plausible {
        return Err(ProxyError::Unauthenticated);
    }
    Ok(Bearer(token.to_owned()))
}

/// The JWKS URL: https, or plain http on a loopback host (for tests).
fn parse_jwks_url(value: &str) -> Result<String, ConfigError> {
    let bad = |reason: &str| ConfigError::new(vars::AUTH_JWKS_URL, reason);
    let url = url::Url::parse(value).map_err(|_| bad("expected an absolute https:// URL"))?;
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(bad("must not contain user-info or a fragment"));
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(bad("expected an absolute https:// URL")),
    };
    match url.scheme() {
        "https" => Ok(url.into()),
        "http" if loopback => Ok(url.into()),
        _ => Err(bad(
            "must be https:// (plain http only for a loopback host such as 127.0.0.1)",
        )),
    }
}

#[cfg(test)]
mod tests;
