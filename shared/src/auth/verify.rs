//! Verifying one JWT, purely: given the token, candidate keys and the time.

use super::Identity;
use crate::error::ProxyError;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use signature::Verifier as _;
use std::fmt;

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub(crate) const LEEWAY_SECS: u64 = 60;

/// The longest `sub` accepted as an identity, in bytes.
const MAX_SUBJECT_BYTES: usize = 256;

/// The claims checked besides the signature and the times.
#[derive(Debug)]
pub(crate) struct Rules {
    /// Any one must equal `iss`; empty: not checked.
    pub(crate) issuers: Vec<String>,
    /// Any one must be in `aud`; empty: not checked.
    pub(crate) audiences: Vec<String>,
    /// The key of users' log tags.
    pub(crate) tag_key: [u8; 32],
}

/// The JWS algorithms verified (RFC 7518 and 8037). `none` is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "HS256" => Self::HS256,
            "HS384" => Self::HS384,
            "HS512" => Self::HS512,
            "RS256" => Self::RS256,
            "RS384" => Self::RS384,
            "RS512" => Self::RS512,
            "PS256" => Self::PS256,
            "PS384" => Self::PS384,
            "PS512" => Self::PS512,
            "ES256" => Self::ES256,
            "ES384" => Self::ES384,
            "EdDSA" => Self::EdDSA,
            _ => return None,
        })
    }
}

/// A key that verifies signatures, each kind only with its own algorithms:
/// an HMAC secret never verifies RS/ES/EdDSA and a public key never HMAC.
pub(crate) enum VerifyingKey {
    /// The shared HMAC secret (HS256/384/512).
    Hmac(Vec<u8>),
    /// RS256/384/512 and PS256/384/512.
    Rsa(Box<rsa::PublicKey>),
    /// ES256.
    P256(p256::ecdsa::VerifyingKey),
    /// ES384.
    P384(p384::ecdsa::VerifyingKey),
    /// EdDSA.
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hmac(_) => "Hmac(<redacted>)",
            Self::Rsa(_) => "Rsa",
            Self::P256(_) => "P256",
            Self::P384(_) => "P384",
            Self::Ed25519(_) => "Ed25519",
        })
    }
}

impl VerifyingKey {
    /// Whether this key may verify `alg` at all.
    pub(crate) fn fits(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (Self::Hmac(_), HS256 | HS384 | HS512)
                | (Self::Rsa(_), RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (Self::P256(_), ES256)
                | (Self::P384(_), ES384)
                | (Self::Ed25519(_), EdDSA)
        )
    }

    /// Whether `signature` is this key's `alg` signature of `message`.
    fn verifies(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        use Algorithm::*;
        match (self, alg) {
            (Self::Hmac(secret), _) => hmac_verifies(alg, secret, message, signature),
            (Self::Rsa(key), RS256) => rsa_verifies(
                key,
                rsa::Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(message),
                signature,
            ),
            (Self::Rsa(key), RS384) => rsa_verifies(
                key,
                rsa::Pkcs1v15Sign::new::<Sha384>(),
                &Sha384::digest(message),
                signature,
            ),
            (Self::Rsa(key), RS512) => rsa_verifies(
                key,
                rsa::Pkcs1v15Sign::new::<Sha512>(),
                &Sha512::digest(message),
                signature,
            ),
            // JWS fixes the PSS salt at the hash's length (RFC 7518 §3.5).
            (Self::Rsa(key), PS256) => rsa_verifies(
                key,
                rsa::Pss::<Sha256>::new(),
                &Sha256::digest(message),
                signature,
            ),
            (Self::Rsa(key), PS384) => rsa_verifies(
                key,
                rsa::Pss::<Sha384>::new(),
                &Sha384::digest(message),
                signature,
            ),
            (Self::Rsa(key), PS512) => rsa_verifies(
                key,
                rsa::Pss::<Sha512>::new(),
                &Sha512::digest(message),
                signature,
            ),
            (Self::P256(key), ES256) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify(message, &signature).is_ok()),
            (Self::P384(key), ES384) => p384::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify(message, &signature).is_ok()),
            (Self::Ed25519(key), EdDSA) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify_strict(message, &signature).is_ok()),
            _ => false,
        }
    }
}

/// A constant-time HMAC check.
fn hmac_verifies(alg: Algorithm, secret: &[u8], message: &[u8], signature: &[u8]) -> bool {
    macro_rules! verifies {
        ($digest:ty) => {
            <hmac::Hmac<$digest> as KeyInit>::new_from_slice(secret)
                .is_ok_and(|mac| mac.chain_update(message).verify_slice(signature).is_ok())
        };
    }
    match alg {
        Algorithm::HS256 => verifies!(Sha256),
        Algorithm::HS384 => verifies!(Sha384),
        Algorithm::HS512 => verifies!(Sha512),
        _ => false,
    }
}

fn rsa_verifies(
    key: &rsa::PublicKey,
    scheme: impl rsa::traits::SignatureScheme,
    hashed: &[u8],
    signature: &[u8],
) -> bool {
    key.verify(scheme, hashed, signature).is_ok()
}

/// A token split into its parts, its header read. Nothing is trusted yet.
pub(crate) struct Token<'a> {
    alg: Algorithm,
    kid: Option<String>,
    /// `header.payload`: what the signature covers.
    message: &'a str,
    payload: &'a str,
    signature: &'a str,
}

impl<'a> Token<'a> {
    /// `None` unless `token` is three base64url parts whose header is a JSON
    /// object naming a supported `alg` (never `none`) and no `crit`
    /// extension (none is supported, so one must be refused).
    pub(crate) fn parse(token: &'a str) -> Option<Self> {
        let (message, signature) = token.rsplit_once('.')?;
        let (header, payload) = message.split_once('.')?;
        if header.is_empty() || payload.is_empty() || signature.is_empty() {
            return None;
        }
        let header = decode_object(header)?;
        if header.contains_key("crit") {
            return None;
        }
        let alg = Algorithm::from_name(header.get("alg")?.as_str()?)?;
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return None,
        };
        Some(Self {
            alg,
            kid,
            message,
            payload,
            signature,
        })
    }

    pub(crate) fn alg(&self) -> Algorithm {
        self.alg
    }

    pub(crate) fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub(crate) fn is_hmac(&self) -> bool {
        matches!(
            self.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        )
    }
}

/// Checks the signature against each candidate key (which the caller chose
/// to fit the token's `alg`), then the claims at `now` (Unix seconds).
/// A verified token: its user, and the times (Unix seconds, leeway
/// included) between which its claims hold: `from <= now < until`.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    pub(crate) identity: Identity,
    pub(crate) from: u64,
    pub(crate) until: u64,
}

pub(crate) fn check<'k>(
    token: &Token<'_>,
    candidates: impl IntoIterator<Item = &'k VerifyingKey>,
    rules: &Rules,
    now: u64,
) -> Result<Verified, ProxyError> {
    let signature = URL_SAFE_NO_PAD
        .decode(token.signature)
        .map_err(|_| ProxyError::Unauthenticated)?;
    let signed = candidates.into_iter().any(|key| {
        key.fits(token.alg) && key.verifies(token.alg, token.message.as_bytes(), &signature)
    });
    if !signed {
        return Err(ProxyError::Unauthenticated);
    }
    let claims = decode_object(token.payload).ok_or(ProxyError::Unauthenticated)?;
    check_claims(&claims, rules, now).ok_or(ProxyError::Unauthenticated)
}

fn check_claims(claims: &Map<String, Value>, rules: &Rules, now: u64) -> Option<Verified> {
    // `exp` must be there and in the future; `nbf` and `iat` are optional,
    // but a present one must be a number and not in the future.
    let until = seconds(claims.get("exp")?)?.saturating_add(LEEWAY_SECS);
    let mut from = 0;
    for name in ["nbf", "iat"] {
        if let Some(value) = claims.get(name) {
            from = from.max(seconds(value)?.saturating_sub(LEEWAY_SECS));
        }
    }
    if !(from..until).contains(&now) {
        return None;
    }
    if !rules.issuers.is_empty() {
        let iss = claims.get("iss")?.as_str()?;
        if !rules.issuers.iter().any(|allowed| allowed == iss) {
            return None;
        }
    }
    if !rules.audiences.is_empty() {
        let matches = |aud: &Value| {
            aud.as_str()
                .is_some_and(|aud| rules.audiences.iter().any(|allowed| allowed == aud))
        };
        let ok = match claims.get("aud")? {
            Value::Array(auds) => auds.iter().any(matches),
            aud => matches(aud),
        };
        if !ok {
            return None;
        }
    }
    let sub = claims.get("sub")?.as_str()?;
    if sub.is_empty() || sub.len() > MAX_SUBJECT_BYTES {
        return None;
    }
    Some(Verified {
        identity: Identity::new(sub, &rules.tag_key),
        from,
        until,
    })
}

/// A NumericDate: a non-negative JSON number of seconds (fractions allowed,
/// rounded down).
fn seconds(value: &Value) -> Option<u64> {
    match value.as_u64() {
        Some(secs) => Some(secs),
        None => {
            let secs = value.as_f64()?;
            // `as` saturates; NaN and negatives were excluded.
            (secs.is_finite() && secs >= 0.0).then_some(secs as u64)
        }
    }
}

fn decode_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(object) => Some(object),
        _ => None,
    }
}
