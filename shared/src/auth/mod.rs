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
    tag: String,
}

impl Identity {
    /// The user `sub`, with its log tag made with `tag_key`.
    pub(crate) fn new(sub: &str, tag_key: &[u8; 32]) -> Self {
        let digest = <hmac::Hmac<Sha256> as hmac::KeyInit>::new_from_slice(tag_key)
            .map(|mac| hmac::Mac::chain_update(mac, sub.as_bytes()))
            .map(hmac::Mac::finalize)
            .map(|output| output.into_bytes().to_vec())
            .unwrap_or_default();
        let tag = digest
            .iter()
            .take(6)
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Self {
            sub: sub.to_owned(),
            tag,
        }
    }

    /// The `sub` claim as the provider issued it.
    pub fn subject(&self) -> &str {
        &self.sub
    }

    /// A short tag for logs: the first 12 hex digits of an HMAC-SHA-256 of
    /// `sub`, keyed with a digest of the deployment's secret (the server's
    /// fal key, else the JWT secret): the same user has the same tag on
    /// every instance of a deployment, and without the secret a tag cannot
    /// be traced back to a `sub`, however guessable. With neither secret
    /// (a JWKS in `user` mode) the key is fixed, and only the randomness of
    /// the provider's ids protects them.
    pub fn tag(&self) -> &str {
        &self.tag
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
        let issuers = claim_list(get(vars::AUTH_ISSUER), vars::AUTH_ISSUER)?;
        let audiences = claim_list(get(vars::AUTH_AUDIENCE), vars::AUTH_AUDIENCE)?;
        if audiences.is_empty()
            && jwks_url
                .as_deref()
                .is_some_and(|url| url.contains(SHARED_FIREBASE_KEYS))
        {
            return Err(ConfigError::new(
                vars::AUTH_AUDIENCE,
                "is required with Firebase's key set, which signs every Firebase project's tokens: set it to your project id",
            ));
        }
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
            rules: Arc::new(Rules {
                issuers,
                audiences,
                tag_key: tag_key(&get),
            }),
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
        if self.jwks.is_some() && (self.rules.issuers.is_empty() || self.rules.audiences.is_empty())
        {
            line.push_str(&format!(
                "; WARNING: without {} and {} any token these keys sign is accepted, including other apps' of the same provider",
                vars::AUTH_ISSUER,
                vars::AUTH_AUDIENCE
            ));
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
            // The version of the set that verified it, not the one in use
            // by now: another request may have stored a newer set meanwhile.
            (verified, Some(keys.version()))
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

/// For the fuzz targets only (`fuzz/`, target `jwt`; re-exported as
/// `fuzzing::authenticate_token`, hidden from the docs): `token` verified at
/// `now` (Unix seconds) by `proxy`'s authentication exactly as a request's
/// bearer token is, but without the request phase's checks on the
/// `Authorization` header, so that tokens those checks refuse (padding,
/// `+` and `/`, over 8 KB) reach the verifier too. `None` when `proxy` has
/// no app-user authentication. Not an API.
#[doc(hidden)]
pub async fn authenticate_token<S: KeySetSource>(
    proxy: &crate::Proxy,
    token: &str,
    now: u64,
    keys: &S,
) -> Option<Result<Identity, ProxyError>> {
    let auth = proxy.config().auth.as_ref()?;
    let bearer = Bearer(token.to_owned());
    Some(auth.authenticate(&bearer, now, keys).await)
}

/// The key of the log tags: a digest of the deployment's secret.
fn tag_key(get: &impl Fn(&str) -> Option<String>) -> [u8; 32] {
    let secret = get(vars::FAL_KEY)
        .or_else(|| get(vars::FAL_KEY_SECRET))
        .or_else(|| get(vars::AUTH_JWT_SECRET))
        .unwrap_or_default();
    Sha256::new()
        .chain_update(b"fal-proxy user tag\0")
        .chain_update(secret.as_bytes())
        .finalize()
        .into()
}

/// The path of the key set Google signs every Firebase project's ID tokens
/// with: only the audience (the project id) tells one app's users from
/// another's.
const SHARED_FIREBASE_KEYS: &str = "/securetoken@system.gserviceaccount.com";

/// An issuer or audience list; a value that lists nothing is an error (an
/// empty value is unset, as for every setting).
fn claim_list(value: Option<String>, var: &'static str) -> Result<Vec<String>, ConfigError> {
    let listed = list(value.clone());
    if value.is_some() && listed.is_empty() {
        return Err(ConfigError::new(
            var,
            "lists nothing; leave it unset to skip the check",
        ));
    }
    Ok(listed)
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
