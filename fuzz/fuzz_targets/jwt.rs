//! App-user authentication: a bearer token is accepted exactly when a plain
//! reference model of the README's rules ("What 'valid' means") accepts it,
//! and no token, key or secret ever shows in an answer, a log line, an
//! error or a `Debug`.
//!
//! The harness makes its keys at start from fixed seeds (an HMAC secret, an
//! Ed25519 and a P-256 key, and others that must not verify), signs a token
//! built from the input (header fields, `alg`, `kid`, claims, base64
//! variants, the signer), then mutates the token. The model: accepted only
//! when the signed part is exactly what was signed, in canonical base64url,
//! the signature part is the signature in canonical base64url, signed by
//! a configured key whose type fits the header's `alg` (HMAC only with the
//! secret, EdDSA/ES256 only with a JWKS key of that `kid`, never one marked
//! for encryption or an `oct` entry), the header has no `crit`, and the
//! claims hold at the time given (`exp` required, `nbf`/`iat` optional, 60
//! s of leeway, the issuer and audience when configured, a `sub`).
//!
//! Each token goes two ways: straight to the verifier
//! (`fuzzing::authenticate_token`, past the `Authorization` header's checks)
//! and through the whole request phase (`Proxy::forward`, with an upstream
//! that records what it is sent): a refused request is never forwarded.

#![no_main]

use arbitrary::Arbitrary;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use bytes::Bytes;
use fal_proxy_core::{
    Exchange, KeySetDocument, KeySetError, KeySetSource, MemoryStore, Proxy, ProxyBody,
    RequestContext, Upstream, UpstreamError, fuzzing,
};
use fal_proxy_fuzz::{SERVER_KEY, contains, leaks, proxy, ready};
use hmac::{KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256, Sha384, Sha512};
use signature::Signer as _;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

/// The time every token is checked at (Unix seconds).
const NOW: u64 = 1_800_000_000;
const LEEWAY: u64 = 60;
const ISSUER: &str = "https://issuer.example/";
const AUDIENCES: &str = "fal-app,fal-app-staging";
const JWKS_URL: &str = "https://auth.example/.well-known/jwks.json";
/// The distinctive part of the configured HMAC secret: never in any output.
const SECRET_MARK: &str = "FUZZ-JWT-SECRET";

/// The harness's keys, made from fixed seeds at start: no key is committed.
struct Keys {
    /// `FAL_PROXY_AUTH_JWT_SECRET`.
    secret: String,
    /// An HMAC secret configured nowhere.
    wrong_secret: Vec<u8>,
    /// The JWKS's `oct` entry (`kid` "oct"): must verify nothing.
    oct: Vec<u8>,
    /// In the JWKS as `kid` "ed", declaring `alg` EdDSA.
    ed: ed25519_dalek::SigningKey,
    /// In the JWKS as `kid` "enc", marked `use: enc`: must verify nothing.
    ed_enc: ed25519_dalek::SigningKey,
    /// In no key set; also embedded in headers as a `jwk` (to be ignored).
    ed_other: ed25519_dalek::SigningKey,
    /// In the JWKS as `kid` "ec", no `alg` declared.
    ec: p256::ecdsa::SigningKey,
    /// In the JWKS as `kid` "ec-384", declaring ES384 (which does not fit a
    /// P-256 key): the entry must be skipped.
    ec_misdeclared: p256::ecdsa::SigningKey,
    /// In no key set.
    ec_other: p256::ecdsa::SigningKey,
    /// The JWKS document.
    jwks: Bytes,
}

fn seed(label: &str) -> [u8; 32] {
    Sha256::digest(label.as_bytes()).into()
}

fn ed_key(label: &str) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&seed(label))
}

fn ec_key(label: &str) -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&seed(label)).expect("a P-256 scalar")
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn ec_jwk(key: &p256::ecdsa::SigningKey, kid: &str) -> Value {
    let point = key.verifying_key().to_sec1_point(false);
    let bytes = point.as_bytes();
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&bytes[1..33]), "y": b64(&bytes[33..65])})
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| {
    let secret = format!("{SECRET_MARK}-{}", b64(&seed("hmac")));
    let oct = seed("oct").to_vec();
    let ed = ed_key("ed");
    let ed_enc = ed_key("ed-enc");
    let ec = ec_key("ec");
    let ec_misdeclared = ec_key("ec-384");
    let mut misdeclared = ec_jwk(&ec_misdeclared, "ec-384");
    misdeclared["alg"] = "ES384".into();
    let jwks = json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "EdDSA", "use": "sig",
         "x": b64(ed.verifying_key().as_bytes())},
        ec_jwk(&ec, "ec"),
        {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc",
         "x": b64(ed_enc.verifying_key().as_bytes())},
        {"kty": "oct", "kid": "oct", "k": b64(&oct)},
        misdeclared,
    ]});
    Keys {
        secret,
        wrong_secret: seed("wrong").to_vec(),
        oct,
        ed,
        ed_enc,
        ed_other: ed_key("ed-other"),
        ec,
        ec_misdeclared,
        ec_other: ec_key("ec-other"),
        jwks: Bytes::from(jwks.to_string()),
    }
});

/// Which authentication settings a proxy has.
#[derive(Clone, Copy, Debug)]
struct Setup {
    secret: bool,
    jwks: bool,
    /// `FAL_PROXY_AUTH_ISSUER` and `FAL_PROXY_AUTH_AUDIENCE` set.
    claims: bool,
}

const SETUPS: [Setup; 3] = [
    Setup {
        secret: true,
        jwks: true,
        claims: true,
    },
    Setup {
        secret: true,
        jwks: false,
        claims: false,
    },
    Setup {
        secret: false,
        jwks: true,
        claims: true,
    },
];

/// One proxy per setup, built once.
static PROXIES: LazyLock<Vec<Proxy>> = LazyLock::new(|| {
    SETUPS
        .iter()
        .map(|setup| {
            let mut pairs = Vec::new();
            if setup.secret {
                pairs.push(("FAL_PROXY_AUTH_JWT_SECRET", KEYS.secret.as_str()));
            }
            if setup.jwks {
                pairs.push(("FAL_PROXY_AUTH_JWKS_URL", JWKS_URL));
            }
            if setup.claims {
                pairs.push(("FAL_PROXY_AUTH_ISSUER", ISSUER));
                pairs.push(("FAL_PROXY_AUTH_AUDIENCE", AUDIENCES));
            }
            proxy(&pairs).expect("an auth configuration")
        })
        .collect()
});

/// fal, recording what it is sent, and the provider serving the key set.
#[derive(Default)]
struct Fal {
    sent: RefCell<Vec<http::Request<Bytes>>>,
}

impl Upstream<Bytes> for Fal {
    type Body = Bytes;

    async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, UpstreamError> {
        self.sent.borrow_mut().push(request);
        Ok(http::Response::new(Bytes::from_static(b"{}")))
    }
}

impl KeySetSource for Fal {
    async fn fetch_key_set(&self, url: &str) -> Result<KeySetDocument, KeySetError> {
        assert_eq!(url, JWKS_URL);
        Ok(KeySetDocument {
            body: KEYS.jwks.clone(),
            cache_control: None,
        })
    }
}

const ALGS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "PS256", "ES256", "ES384", "EdDSA", "none", "None",
    "hs256", "HS256 ", "ES512", "Ed25519", "",
];
const KIDS: &[&str] = &["ed", "ec", "enc", "oct", "ec-384", "unknown", ""];
const ISSUERS: &[&str] = &[
    ISSUER,
    "https://issuer.example",
    "https://evil.example/",
    "",
];
const AUDS: &[&str] = &["fal-app", "fal-app-staging", "other-app", "FAL-APP", ""];
const SUBS: &[&str] = &["user-FUZZ-SUB-1", "auth0|FUZZ-SUB-2", "", " "];
const EDGES: &[i64] = &[-61, -60, -59, -1, 0, 1, 59, 60, 61];
const FLOATS: &[f64] = &[
    NOW as f64 + 0.5,
    NOW as f64 + 60.9,
    NOW as f64 - 60.5,
    NOW as f64 - 59.5,
    -0.0,
    -1.0,
    0.5,
    1e300,
    1.8446744073709552e19,
];

#[derive(Arbitrary, Debug)]
enum Alg {
    /// What the signer signs with.
    Signer,
    Pick(u8),
    Absent,
    Number,
}

#[derive(Arbitrary, Debug)]
enum Kid {
    /// The signer's key's `kid` in the JWKS, absent for HMAC.
    Signer,
    Absent,
    Pick(u8),
    Number,
}

#[derive(Arbitrary, Debug)]
struct Header {
    alg: Alg,
    kid: Kid,
    typ: bool,
    /// A `crit` member, which must be refused whatever it says.
    crit: Option<bool>,
    /// An embedded `jwk` (another key's): to be ignored.
    jwk: bool,
    /// The header's bytes instead of the above.
    raw: Option<Vec<u8>>,
}

#[derive(Arbitrary, Debug)]
enum Time {
    Offset(i32),
    Edge(u8),
    Float(u8),
    Max,
    Text,
    Null,
}

#[derive(Arbitrary, Debug)]
enum Aud {
    Pick(u8),
    List(Vec<u8>),
    Mixed,
    Number,
}

#[derive(Arbitrary, Debug)]
enum Sub {
    Pick(u8),
    Long(u16),
    Text(String),
    Number,
}

/// A claim: valid by default (the first variant), so that most inputs
/// build tokens the model accepts and a mutation or one odd claim refuses.
#[derive(Arbitrary, Debug)]
enum Claim<T> {
    Valid,
    Absent,
    Odd(T),
}

#[derive(Arbitrary, Debug)]
struct Claims {
    exp: Claim<Time>,
    nbf: Claim<Time>,
    iat: Claim<Time>,
    iss: Claim<u8>,
    aud: Claim<Aud>,
    sub: Claim<Sub>,
    /// The payload's bytes instead of the above.
    raw: Option<Vec<u8>>,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Signer {
    /// The configured secret, with HS256/384/512.
    Secret(u8),
    WrongSecret(u8),
    /// The JWKS's `oct` entry's secret.
    Oct(u8),
    /// HMAC keyed with the Ed25519 key's public bytes (key confusion).
    EdPublicAsSecret(u8),
    /// HMAC keyed with the key set document itself.
    JwksAsSecret(u8),
    Ed,
    EdEnc,
    EdOther,
    Ec,
    EcMisdeclared,
    EcOther,
    Empty,
}

impl Signer {
    fn alg(self) -> &'static str {
        match self {
            Self::Secret(hash)
            | Self::WrongSecret(hash)
            | Self::Oct(hash)
            | Self::EdPublicAsSecret(hash)
            | Self::JwksAsSecret(hash) => ["HS256", "HS384", "HS512"][usize::from(hash % 3)],
            Self::Ed | Self::EdEnc | Self::EdOther => "EdDSA",
            Self::Ec | Self::EcMisdeclared | Self::EcOther => "ES256",
            Self::Empty => "none",
        }
    }

    fn kid(self) -> Option<&'static str> {
        match self {
            Self::Ed | Self::EdOther => Some("ed"),
            Self::EdEnc => Some("enc"),
            Self::Ec | Self::EcOther => Some("ec"),
            Self::EcMisdeclared => Some("ec-384"),
            Self::Oct(_) => Some("oct"),
            _ => None,
        }
    }

    fn sign(self, message: &[u8]) -> Vec<u8> {
        let keys = &*KEYS;
        let hmac = |key: &[u8]| -> Vec<u8> {
            match self.alg() {
                "HS256" => hmac::Hmac::<Sha256>::new_from_slice(key)
                    .expect("any HMAC key")
                    .chain_update(message)
                    .finalize()
                    .into_bytes()
                    .to_vec(),
                "HS384" => hmac::Hmac::<Sha384>::new_from_slice(key)
                    .expect("any HMAC key")
                    .chain_update(message)
                    .finalize()
                    .into_bytes()
                    .to_vec(),
                _ => hmac::Hmac::<Sha512>::new_from_slice(key)
                    .expect("any HMAC key")
                    .chain_update(message)
                    .finalize()
                    .into_bytes()
                    .to_vec(),
            }
        };
        let ec = |key: &p256::ecdsa::SigningKey| -> Vec<u8> {
            let signature: p256::ecdsa::Signature = key.sign(message);
            signature.to_bytes().to_vec()
        };
        match self {
            Self::Secret(_) => hmac(keys.secret.as_bytes()),
            Self::WrongSecret(_) => hmac(&keys.wrong_secret),
            Self::Oct(_) => hmac(&keys.oct),
            Self::EdPublicAsSecret(_) => hmac(keys.ed.verifying_key().as_bytes()),
            Self::JwksAsSecret(_) => hmac(&keys.jwks),
            Self::Ed => keys.ed.sign(message).to_bytes().to_vec(),
            Self::EdEnc => keys.ed_enc.sign(message).to_bytes().to_vec(),
            Self::EdOther => keys.ed_other.sign(message).to_bytes().to_vec(),
            Self::Ec => ec(&keys.ec),
            Self::EcMisdeclared => ec(&keys.ec_misdeclared),
            Self::EcOther => ec(&keys.ec_other),
            Self::Empty => Vec::new(),
        }
    }

    /// Whether this signer's signatures verify under `setup` for a token
    /// whose header says `alg` and `kid`: the README's rules.
    fn verifies(self, setup: Setup, alg: &str, kid: Option<&str>) -> bool {
        if alg != self.alg() {
            return false;
        }
        match self {
            // The secret verifies HMAC whatever the `kid`.
            Self::Secret(_) => setup.secret,
            // A JWKS key: its own `kid`, or none named.
            Self::Ed | Self::Ec => setup.jwks && kid.is_none_or(|kid| Some(kid) == self.kid()),
            _ => false,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Encoding {
    Canonical,
    /// base64url with `=` padding.
    Padded,
    /// The standard alphabet (`+`, `/`), padded.
    Standard,
}

impl Encoding {
    fn encode(self, bytes: &[u8]) -> String {
        match self {
            Self::Canonical => URL_SAFE_NO_PAD.encode(bytes),
            Self::Padded => URL_SAFE.encode(bytes),
            Self::Standard => STANDARD.encode(bytes),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    Flip {
        at: u16,
        bit: u8,
    },
    Set {
        at: u16,
        byte: u8,
    },
    Cut {
        at: u16,
    },
    Insert {
        at: u16,
        bytes: Vec<u8>,
    },
    Remove {
        at: u16,
        len: u8,
    },
    /// Swap two of the dot-separated parts.
    Swap {
        a: u8,
        b: u8,
    },
    /// One part replaced with these bytes, base64url-encoded.
    Replace {
        part: u8,
        bytes: Vec<u8>,
    },
    /// An extra part at the end.
    Extra(Vec<u8>),
}

impl Mutation {
    fn apply(&self, token: &mut Vec<u8>) {
        let at = |at: u16, len: usize| usize::from(at) % (len + 1);
        match self {
            Self::Flip { at: i, bit } => {
                if !token.is_empty() {
                    let i = usize::from(*i) % token.len();
                    token[i] ^= 1 << (bit % 8);
                }
            }
            Self::Set { at: i, byte } => {
                if !token.is_empty() {
                    let i = usize::from(*i) % token.len();
                    token[i] = *byte;
                }
            }
            Self::Cut { at: i } => token.truncate(at(*i, token.len())),
            Self::Insert { at: i, bytes } => {
                let i = at(*i, token.len());
                token.splice(i..i, bytes.iter().take(16).copied());
            }
            Self::Remove { at: i, len } => {
                let i = at(*i, token.len());
                let end = (i + usize::from(*len)).min(token.len());
                token.drain(i..end);
            }
            Self::Swap { a, b } => {
                let mut parts: Vec<Vec<u8>> =
                    token.split(|&b| b == b'.').map(<[u8]>::to_vec).collect();
                let (a, b) = (usize::from(*a) % parts.len(), usize::from(*b) % parts.len());
                parts.swap(a, b);
                *token = parts.join(&b'.');
            }
            Self::Replace { part, bytes } => {
                let mut parts: Vec<Vec<u8>> =
                    token.split(|&b| b == b'.').map(<[u8]>::to_vec).collect();
                let i = usize::from(*part) % parts.len();
                parts[i] = b64(bytes).into_bytes();
                *token = parts.join(&b'.');
            }
            Self::Extra(bytes) => {
                token.push(b'.');
                token.extend_from_slice(b64(bytes).as_bytes());
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: u8,
    header: Header,
    claims: Claims,
    signer: Signer,
    /// Of the header, the payload and the signature.
    encodings: [Encoding; 3],
    mutations: Vec<Mutation>,
}

fn time(spec: &Time) -> Value {
    let relative = |offset: i64| json!(i64::try_from(NOW).unwrap_or(i64::MAX) + offset);
    match spec {
        Time::Offset(offset) => relative(i64::from(*offset)),
        Time::Edge(pick) => relative(EDGES[usize::from(*pick) % EDGES.len()]),
        Time::Float(pick) => json!(FLOATS[usize::from(*pick) % FLOATS.len()]),
        Time::Max => json!(u64::MAX),
        Time::Text => json!(NOW.to_string()),
        Time::Null => Value::Null,
    }
}

fn header_bytes(header: &Header, signer: Signer) -> Vec<u8> {
    if let Some(raw) = &header.raw {
        return raw.clone();
    }
    let mut map = Map::new();
    match &header.alg {
        Alg::Signer => {
            map.insert("alg".into(), signer.alg().into());
        }
        Alg::Pick(pick) => {
            map.insert("alg".into(), ALGS[usize::from(*pick) % ALGS.len()].into());
        }
        Alg::Absent => {}
        Alg::Number => {
            map.insert("alg".into(), json!(256));
        }
    }
    match &header.kid {
        Kid::Signer => {
            if let Some(kid) = signer.kid() {
                map.insert("kid".into(), kid.into());
            }
        }
        Kid::Absent => {}
        Kid::Pick(pick) => {
            map.insert("kid".into(), KIDS[usize::from(*pick) % KIDS.len()].into());
        }
        Kid::Number => {
            map.insert("kid".into(), json!(1));
        }
    }
    if header.typ {
        map.insert("typ".into(), "JWT".into());
    }
    if let Some(empty) = header.crit {
        let crit = if empty { json!([]) } else { json!(["exp"]) };
        map.insert("crit".into(), crit);
    }
    if header.jwk {
        let x = b64(KEYS.ed_other.verifying_key().as_bytes());
        map.insert(
            "jwk".into(),
            json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
        );
    }
    Value::Object(map).to_string().into_bytes()
}

fn payload_bytes(claims: &Claims) -> Vec<u8> {
    if let Some(raw) = &claims.raw {
        return raw.clone();
    }
    let mut map = Map::new();
    let times = [
        ("exp", &claims.exp, Time::Offset(3600)),
        ("nbf", &claims.nbf, Time::Offset(-10)),
        ("iat", &claims.iat, Time::Offset(-10)),
    ];
    for (name, spec, valid) in times {
        let value = match spec {
            Claim::Valid => time(&valid),
            Claim::Absent => continue,
            Claim::Odd(spec) => time(spec),
        };
        map.insert(name.into(), value);
    }
    let iss = match claims.iss {
        Claim::Valid => Some(ISSUER),
        Claim::Absent => None,
        Claim::Odd(pick) => Some(ISSUERS[usize::from(pick) % ISSUERS.len()]),
    };
    if let Some(iss) = iss {
        map.insert("iss".into(), iss.into());
    }
    let pick_aud = |pick: &u8| Value::from(AUDS[usize::from(*pick) % AUDS.len()]);
    let aud = match &claims.aud {
        Claim::Valid => Some(json!("fal-app")),
        Claim::Absent => None,
        Claim::Odd(Aud::Pick(pick)) => Some(pick_aud(pick)),
        Claim::Odd(Aud::List(picks)) => Some(picks.iter().take(4).map(pick_aud).collect()),
        Claim::Odd(Aud::Mixed) => Some(json!([1, null, ["fal-app"], {"aud": "fal-app"}])),
        Claim::Odd(Aud::Number) => Some(json!(1)),
    };
    if let Some(aud) = aud {
        map.insert("aud".into(), aud);
    }
    let sub = match &claims.sub {
        Claim::Valid => Some(json!(SUBS[0])),
        Claim::Absent => None,
        Claim::Odd(Sub::Pick(pick)) => Some(json!(SUBS[usize::from(*pick) % SUBS.len()])),
        Claim::Odd(Sub::Long(len)) => Some(json!("s".repeat(usize::from(*len % 300)))),
        Claim::Odd(Sub::Text(text)) => Some(json!(text)),
        Claim::Odd(Sub::Number) => Some(json!(7)),
    };
    if let Some(sub) = sub {
        map.insert("sub".into(), sub);
    }
    Value::Object(map).to_string().into_bytes()
}

/// A NumericDate as the README has it: a number of seconds, not negative,
/// fractions rounded down (beyond `u64`: the largest).
fn numeric_date(value: &Value) -> Option<u64> {
    let Value::Number(number) = value else {
        return None;
    };
    if let Some(whole) = number.as_u64() {
        return Some(whole);
    }
    let float = number.as_f64()?;
    if float.is_nan() || float < 0.0 {
        return None;
    }
    Some(if float >= u64::MAX as f64 {
        u64::MAX
    } else {
        float.floor() as u64
    })
}

/// A token as the harness signed it, and the model's verdict on any text.
struct Built {
    /// The token as signed, before any mutation.
    text: String,
    /// `header.payload`: what the signature covers.
    message: String,
    /// The signature in canonical base64url (the token may carry another
    /// encoding of it, which the model refuses).
    signature: String,
    /// The user when the header, claims and signer pass the model.
    sub: Option<String>,
}

impl Built {
    /// The model's verdict on `text`: its user, or `None` for a refusal.
    /// Accepted only when the signed part is exactly what was signed and
    /// the signature part is the signature in canonical base64url (a
    /// mutation may turn a padded signature into that: still the same
    /// signature over the same text, so rightly accepted).
    fn verdict(&self, text: &str) -> Option<String> {
        let (message, signature) = text.rsplit_once('.')?;
        if message != self.message || signature != self.signature {
            return None;
        }
        self.sub.clone()
    }
}

fn model(
    setup: Setup,
    header: &[u8],
    payload: &[u8],
    signature: &[u8],
    input: &Input,
) -> Option<String> {
    // Canonical base64url in the signed parts, no part empty (the
    // signature's own encoding is checked on the final text).
    let canonical = [header, payload]
        .iter()
        .zip(input.encodings)
        .all(|(bytes, encoding)| {
            !bytes.is_empty() && encoding.encode(bytes) == URL_SAFE_NO_PAD.encode(bytes)
        });
    if !canonical || signature.is_empty() {
        return None;
    }
    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(header) else {
        return None;
    };
    if header.contains_key("crit") {
        return None;
    }
    let alg = header.get("alg")?.as_str()?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return None,
    };
    if !input.signer.verifies(setup, alg, kid) {
        return None;
    }
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(payload) else {
        return None;
    };
    let until = numeric_date(claims.get("exp")?)?.saturating_add(LEEWAY);
    let mut from = 0;
    for name in ["nbf", "iat"] {
        if let Some(value) = claims.get(name) {
            from = from.max(numeric_date(value)?.saturating_sub(LEEWAY));
        }
    }
    if NOW < from || NOW >= until {
        return None;
    }
    if setup.claims {
        if claims.get("iss")?.as_str()? != ISSUER {
            return None;
        }
        let listed = |aud: &Value| {
            aud.as_str()
                .is_some_and(|aud| AUDIENCES.split(',').any(|a| a == aud))
        };
        let audience = match claims.get("aud")? {
            Value::Array(auds) => auds.iter().any(listed),
            aud => listed(aud),
        };
        if !audience {
            return None;
        }
    }
    let sub = claims.get("sub")?.as_str()?;
    (!sub.is_empty() && sub.len() <= 256).then(|| sub.to_owned())
}

/// How many signatures are remembered; past it the memory starts over.
const MAX_SIGNATURES: usize = 4096;

thread_local! {
    /// Signatures by signer and message: most mutations of an input leave
    /// its header and claims alone, and signing (ES256 above all) costs
    /// more than the checks under test.
    static SIGNATURES: RefCell<HashMap<(Signer, String), Vec<u8>>> = RefCell::default();
}

fn signed(signer: Signer, message: &str) -> Vec<u8> {
    SIGNATURES.with_borrow_mut(|memory| {
        let key = (signer, message.to_owned());
        if let Some(signature) = memory.get(&key) {
            return signature.clone();
        }
        if memory.len() >= MAX_SIGNATURES {
            memory.clear();
        }
        let signature = signer.sign(message.as_bytes());
        memory.insert(key, signature.clone());
        signature
    })
}

fn build(setup: Setup, input: &Input) -> Built {
    let [on_header, on_payload, on_signature] = input.encodings;
    let header = header_bytes(&input.header, input.signer);
    let payload = payload_bytes(&input.claims);
    let message = format!(
        "{}.{}",
        on_header.encode(&header),
        on_payload.encode(&payload)
    );
    let signature = signed(input.signer, &message);
    let text = format!("{message}.{}", on_signature.encode(&signature));
    let sub = model(setup, &header, &payload, &signature, input);
    Built {
        text,
        message,
        signature: URL_SAFE_NO_PAD.encode(&signature),
        sub,
    }
}

/// Asserts that `text` holds no key, no secret, not `token` and not
/// `signature` (the signature part as signed). The token is looked for only
/// when it is long and of base64url and dots alone: a mutated token can be
/// any text, such as a piece of the target URL that the log rightly holds.
fn assert_clean(text: &[u8], token: &str, signature: &str, what: &str) {
    assert!(!leaks(text), "a key in {what}");
    assert!(
        !contains(text, SECRET_MARK.as_bytes()),
        "the JWT secret in {what}"
    );
    let token_like = token.len() >= 16
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if token_like {
        assert!(!contains(text, token.as_bytes()), "the token in {what}");
    }
    if signature.len() >= 16 {
        assert!(
            !contains(text, signature.as_bytes()),
            "the signature in {what}"
        );
    }
}

fn assert_clean_exchange(
    exchange: &Exchange,
    status: http::StatusCode,
    token: &str,
    signature: &str,
    sub: Option<&str>,
) {
    let line = exchange.log_line(status, Duration::ZERO, 0);
    assert_clean(line.as_bytes(), token, signature, "the log line");
    assert_clean(
        format!("{exchange:?}").as_bytes(),
        token,
        signature,
        "the exchange",
    );
    if let Some(sub) = sub.filter(|sub| sub.contains("FUZZ-SUB")) {
        assert!(!line.contains(sub), "the sub in the log line");
    }
}

/// `FUZZ_SHOW=1`: each input's verdict on stderr (to pick seeds, to check
/// that inputs reach acceptance at all).
static SHOW: LazyLock<bool> = LazyLock::new(|| std::env::var_os("FUZZ_SHOW").is_some());

fuzz_target!(|input: Input| {
    let pick = usize::from(input.setup) % SETUPS.len();
    let (setup, proxy) = (SETUPS[pick], &PROXIES[pick]);
    let built = build(setup, &input);
    let mut bytes = built.text.clone().into_bytes();
    for mutation in input.mutations.iter().take(4) {
        mutation.apply(&mut bytes);
    }
    let token = String::from_utf8_lossy(&bytes).into_owned();
    let signature = built.signature.as_str();
    let expected = built.verdict(&token);

    if *SHOW {
        eprintln!(
            "verdict setup={pick} signer={:?} accepted={}",
            input.signer,
            expected.is_some()
        );
    }

    // Straight to the verifier.
    let fal = Fal::default();
    let verdict =
        ready(fuzzing::authenticate_token(proxy, &token, NOW, &fal)).expect("authentication is on");
    match &verdict {
        Ok(identity) => {
            assert_eq!(
                Some(identity.subject()),
                expected.as_deref(),
                "accepted {token:?}"
            );
            assert_clean(
                format!("{identity:?}").as_bytes(),
                &token,
                signature,
                "the identity",
            );
        }
        Err(error) => {
            assert_eq!(expected, None, "refused {token:?}: {error}");
            assert_clean(error.to_string().as_bytes(), &token, signature, "the error");
            assert_clean(
                format!("{error:?}").as_bytes(),
                &token,
                signature,
                "the error's Debug",
            );
        }
    }

    // Through the whole request phase, as `Authorization: Bearer <token>`.
    let Ok(authorization) = http::HeaderValue::from_str(&format!("Bearer {token}")) else {
        return;
    };
    let mut request = http::Request::post("/api/fal/proxy")
        .header("x-fal-target-url", "https://fal.run/fal-ai/flux/dev")
        .header("authorization", authorization)
        .body(Bytes::from_static(b"{}"))
        .expect("a request");
    request.extensions_mut().insert(RequestContext::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW),
        None,
    ));
    // The header's checks: the token trimmed, of base64url and dots, 8 KB at most.
    let trimmed = token.trim_matches([' ', '\t']);
    let plausible = !trimmed.is_empty()
        && trimmed.len() <= 8 * 1024
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let expected = plausible.then(|| built.verdict(trimmed)).flatten();
    let response = ready(proxy.forward(&fal, &MemoryStore::new(), request));
    let sent = fal.sent.borrow();
    let exchange = response
        .extensions()
        .get::<Exchange>()
        .expect("the exchange")
        .clone();
    let status = response.status();
    for (name, value) in response.headers() {
        assert_clean(
            value.as_bytes(),
            &token,
            signature,
            &format!("answer header {name}"),
        );
    }
    match (&expected, sent.as_slice()) {
        (Some(sub), [sent]) => {
            assert_eq!(status, 200);
            assert_eq!(
                exchange.identity().map(|id| id.subject()),
                Some(sub.as_str())
            );
            let headers = sent.headers();
            assert_eq!(headers.get_all("authorization").iter().count(), 1);
            assert_eq!(
                headers["authorization"],
                format!("Key {SERVER_KEY}").as_str()
            );
            for (name, value) in headers {
                if name != "authorization" {
                    assert_clean(
                        value.as_bytes(),
                        &token,
                        signature,
                        &format!("upstream header {name}"),
                    );
                }
                if trimmed.len() >= 16 {
                    assert!(
                        !contains(value.as_bytes(), trimmed.as_bytes()),
                        "the token upstream in {name}"
                    );
                }
            }
            assert_clean(
                sent.uri().to_string().as_bytes(),
                &token,
                signature,
                "the upstream URL",
            );
        }
        (None, []) => {
            assert_eq!(status, 401, "{token:?}");
            let ProxyBody::Full(body) = response.into_body() else {
                panic!("a refusal with an upstream body");
            };
            assert_clean(&body, &token, signature, "the answer");
            assert!(
                contains(&body, b"\"unauthenticated\""),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
        (expected, sent) => panic!(
            "{token:?}: model {expected:?}, {} sent upstream, status {status}",
            sent.len()
        ),
    }
    assert_clean_exchange(&exchange, status, &token, signature, expected.as_deref());
});
