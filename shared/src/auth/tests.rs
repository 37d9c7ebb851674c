//! Table tests of token verification with real tokens, signed here with
//! keys generated at test time (none is committed).

use super::jwks::REFETCH_INTERVAL_SECS;
use super::verify::LEEWAY_SECS;
use super::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use signature::{SignatureEncoding, Signer};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::OnceLock;

const NOW: u64 = 1_800_000_000;
const SECRET: &str = "a-test-hmac-secret-of-at-least-32-bytes!";
const ISSUER: &str = "https://issuer.example";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key made at test time, and its public JWK.
enum TestKey {
    Rsa(rsa::PrivateKey),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Ed(ed25519_dalek::SigningKey),
}

fn seed(label: &str) -> [u8; 32] {
    Sha256::digest(label.as_bytes()).into()
}

fn rsa_key() -> &'static rsa::PrivateKey {
    static KEY: OnceLock<rsa::PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap())
}

fn other_rsa_key() -> &'static rsa::PrivateKey {
    static KEY: OnceLock<rsa::PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap())
}

impl TestKey {
    fn rsa() -> Self {
        Self::Rsa(rsa_key().clone())
    }
    fn other_rsa() -> Self {
        Self::Rsa(other_rsa_key().clone())
    }
    fn p256() -> Self {
        Self::P256(p256::ecdsa::SigningKey::from_slice(&seed("p256")).unwrap())
    }
    fn p384() -> Self {
        let mut bytes = [0u8; 48];
        bytes[..32].copy_from_slice(&seed("p384"));
        bytes[32..].copy_from_slice(&seed("p384 tail")[..16]);
        Self::P384(p384::ecdsa::SigningKey::from_slice(&bytes).unwrap())
    }
    fn ed() -> Self {
        Self::Ed(ed25519_dalek::SigningKey::from_bytes(&seed("ed25519")))
    }

    fn jwk(&self, kid: &str, alg: Option<&str>) -> Value {
        use rsa::traits::PublicKeyParts as _;
        let mut jwk = match self {
            Self::Rsa(key) => {
                let public = key.to_public_key();
                json!({"kty": "RSA", "n": b64(&public.n_bytes()), "e": b64(&public.e_bytes())})
            }
            Self::P256(key) => {
                let point = key.verifying_key().to_sec1_point(false);
                let point = point.as_bytes();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Self::P384(key) => {
                let point = key.verifying_key().to_sec1_point(false);
                let point = point.as_bytes();
                json!({"kty": "EC", "crv": "P-384", "x": b64(&point[1..49]), "y": b64(&point[49..97])})
            }
            Self::Ed(key) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key.verifying_key().as_bytes())})
            }
        };
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        if let Some(alg) = alg {
            jwk["alg"] = json!(alg);
        }
        jwk
    }

    fn sign(&self, alg: &str, message: &[u8]) -> Vec<u8> {
        use sha2::{Sha384, Sha512};
        match (self, alg) {
            (Self::Rsa(key), "RS256") => rsa::pkcs1v15::SigningKey::<Sha256>::new(key.clone())
                .sign(message)
                .to_vec(),
            (Self::Rsa(key), "RS384") => rsa::pkcs1v15::SigningKey::<Sha384>::new(key.clone())
                .sign(message)
                .to_vec(),
            (Self::Rsa(key), "RS512") => rsa::pkcs1v15::SigningKey::<Sha512>::new(key.clone())
                .sign(message)
                .to_vec(),
            (Self::Rsa(key), "PS256") => rsa::pss::SigningKey::<Sha256>::new(key.clone())
                .sign(message)
                .to_vec(),
            (Self::Rsa(key), "PS384") => rsa::pss::SigningKey::<Sha384>::new(key.clone())
                .sign(message)
                .to_vec(),
            (Self::Rsa(key), "PS512") => rsa::pss::SigningKey::<Sha512>::new(key.clone())
                .sign(message)
                .to_vec(),
            (Self::P256(key), "ES256") => {
                let signature: p256::ecdsa::Signature = key.sign(message);
                signature.to_bytes().to_vec()
            }
            (Self::P384(key), "ES384") => {
                let signature: p384::ecdsa::Signature = key.sign(message);
                signature.to_bytes().to_vec()
            }
            (Self::Ed(key), "EdDSA") => key.sign(message).to_bytes().to_vec(),
            _ => panic!("no {alg} with this key"),
        }
    }
}

fn hmac(alg: &str, secret: &[u8], message: &[u8]) -> Vec<u8> {
    use hmac::{KeyInit, Mac};
    use sha2::{Sha384, Sha512};
    match alg {
        "HS256" => hmac::Hmac::<Sha256>::new_from_slice(secret)
            .unwrap()
            .chain_update(message)
            .finalize()
            .into_bytes()
            .to_vec(),
        "HS384" => hmac::Hmac::<Sha384>::new_from_slice(secret)
            .unwrap()
            .chain_update(message)
            .finalize()
            .into_bytes()
            .to_vec(),
        "HS512" => hmac::Hmac::<Sha512>::new_from_slice(secret)
            .unwrap()
            .chain_update(message)
            .finalize()
            .into_bytes()
            .to_vec(),
        _ => panic!("not an HMAC alg: {alg}"),
    }
}

/// `header.payload.signature` from JSON values and a signing function.
fn token_with(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = sign(message.as_bytes());
    format!("{message}.{}", b64(&signature))
}

fn claims() -> Value {
    json!({"sub": "user-123", "iss": ISSUER, "aud": "my-app", "exp": NOW + 600, "iat": NOW - 10})
}

fn signed(key: &TestKey, alg: &str, kid: &str, claims: &Value) -> String {
    token_with(
        &json!({"alg": alg, "typ": "JWT", "kid": kid}),
        claims,
        |m| key.sign(alg, m),
    )
}

fn hs(alg: &str, claims: &Value) -> String {
    token_with(&json!({"alg": alg, "typ": "JWT"}), claims, |m| {
        hmac(alg, SECRET.as_bytes(), m)
    })
}

/// A JWKS URL's answers, scripted; counts fetches.
struct FakeProvider {
    documents: RefCell<Vec<Result<KeySetDocument, KeySetError>>>,

    fetches: Cell<usize>,
}

impl FakeProvider {
    fn serving(jwks: Value) -> Self {
        let provider = Self {
            documents: RefCell::new(Vec::new()),
            fetches: Cell::new(0),
        };
        provider.then(Ok(jwks));
        provider
    }

    /// What every later fetch gets.
    fn then(&self, next: Result<Value, KeySetError>) {
        *self.documents.borrow_mut() = vec![next.map(|jwks| KeySetDocument {
            body: Bytes::from(jwks.to_string()),
            cache_control: Some("max-age=600".to_owned()),
        })];
    }
}

use bytes::Bytes;

impl KeySetSource for FakeProvider {
    async fn fetch_key_set(&self, url: &str) -> Result<KeySetDocument, KeySetError> {
        assert_eq!(url, "https://issuer.example/.well-known/jwks.json");
        self.fetches.set(self.fetches.get() + 1);
        self.documents.borrow()[0].clone()
    }
}

fn auth_from(pairs: &[(&str, &str)]) -> Auth {
    let map: HashMap<&str, &str> = pairs.iter().copied().collect();
    Auth::from_lookup(|name| map.get(name).map(|v| (*v).to_owned()))
        .unwrap()
        .expect("auth on")
}

fn jwks_auth() -> Auth {
    auth_from(&[
        (
            "FAL_PROXY_AUTH_JWKS_URL",
            "https://issuer.example/.well-known/jwks.json",
        ),
        ("FAL_PROXY_AUTH_JWT_SECRET", SECRET),
        ("FAL_PROXY_AUTH_ISSUER", ISSUER),
        ("FAL_PROXY_AUTH_AUDIENCE", "other-app, my-app"),
    ])
}

fn run<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

fn verify_at(
    auth: &Auth,
    provider: &FakeProvider,
    token: &str,
    now: u64,
) -> Result<Identity, ProxyError> {
    run(auth.authenticate(&Bearer(token.to_owned()), now, provider))
}

fn all_keys_jwks() -> Value {
    json!({"keys": [
        TestKey::rsa().jwk("rsa", None),
        TestKey::p256().jwk("p256", Some("ES256")),
        TestKey::p384().jwk("p384", None),
        TestKey::ed().jwk("ed", Some("EdDSA")),
    ]})
}

#[test]
fn every_algorithm_verifies() {
    let auth = jwks_auth();
    let provider = FakeProvider::serving(all_keys_jwks());
    let cases: Vec<(String, &str)> = vec![
        (signed(&TestKey::rsa(), "RS256", "rsa", &claims()), "RS256"),
        (signed(&TestKey::rsa(), "RS384", "rsa", &claims()), "RS384"),
        (signed(&TestKey::rsa(), "RS512", "rsa", &claims()), "RS512"),
        (signed(&TestKey::rsa(), "PS256", "rsa", &claims()), "PS256"),
        (signed(&TestKey::rsa(), "PS384", "rsa", &claims()), "PS384"),
        (signed(&TestKey::rsa(), "PS512", "rsa", &claims()), "PS512"),
        (
            signed(&TestKey::p256(), "ES256", "p256", &claims()),
            "ES256",
        ),
        (
            signed(&TestKey::p384(), "ES384", "p384", &claims()),
            "ES384",
        ),
        (signed(&TestKey::ed(), "EdDSA", "ed", &claims()), "EdDSA"),
        (hs("HS256", &claims()), "HS256"),
        (hs("HS384", &claims()), "HS384"),
        (hs("HS512", &claims()), "HS512"),
    ];
    for (token, alg) in cases {
        let identity =
            verify_at(&auth, &provider, &token, NOW).unwrap_or_else(|e| panic!("{alg}: {e:?}"));
        assert_eq!(identity.subject(), "user-123", "{alg}");
    }
    assert_eq!(provider.fetches.get(), 1, "one fetch for every token");
}

#[test]
fn times_are_checked_with_60_seconds_of_leeway() {
    let auth = jwks_auth();
    let provider = FakeProvider::serving(all_keys_jwks());
    let with = |changes: Value| {
        let mut claims = claims();
        for (name, value) in changes.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        signed(&TestKey::ed(), "EdDSA", "ed", &claims)
    };
    let cases = [
        (json!({"exp": NOW + 1}), true),
        (json!({"exp": NOW - 59}), true),
        (json!({"exp": NOW - 60}), false),
        (json!({"exp": NOW - 3600}), false),
        (json!({"exp": null}), false),
        (json!({"exp": "tomorrow"}), false),
        (json!({"exp": -5}), false),
        (json!({"exp": (NOW + 10) as f64 + 0.5}), true),
        (json!({"nbf": NOW + 60}), true),
        (json!({"nbf": NOW + 61}), false),
        (json!({"nbf": "soon"}), false),
        (json!({"iat": NOW + 60}), true),
        (json!({"iat": NOW + 3600}), false),
        (json!({"iat": null}), true),
    ];
    for (changes, ok) in cases {
        let result = verify_at(&auth, &provider, &with(changes.clone()), NOW);
        assert_eq!(result.is_ok(), ok, "{changes} → {result:?}");
        if !ok {
            assert_eq!(result, Err(ProxyError::Unauthenticated));
        }
    }
}

#[test]
fn issuer_audience_and_subject() {
    let auth = jwks_auth();
    let provider = FakeProvider::serving(all_keys_jwks());
    let with = |name: &str, value: Value| {
        let mut claims = claims();
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value;
        }
        hs("HS256", &claims)
    };
    let cases = [
        ("iss", json!("https://issuer.example/"), false),
        ("iss", json!("https://evil.example"), false),
        ("iss", Value::Null, false),
        ("aud", json!("other-app"), true),
        ("aud", json!(["x", "my-app"]), true),
        ("aud", json!(["x", "y"]), false),
        ("aud", json!("MY-APP"), false),
        ("aud", Value::Null, false),
        ("aud", json!(5), false),
        ("sub", Value::Null, false),
        ("sub", json!(""), false),
        ("sub", json!(42), false),
        ("sub", json!("x".repeat(300)), false),
    ];
    for (name, value, ok) in cases {
        let result = verify_at(&auth, &provider, &with(name, value.clone()), NOW);
        assert_eq!(result.is_ok(), ok, "{name}={value} → {result:?}");
    }

    // Without issuer and audience settings, neither is checked.
    let lax = auth_with_secret_only();
    let mut claims = claims();
    claims.as_object_mut().unwrap().remove("iss");
    claims.as_object_mut().unwrap().remove("aud");
    assert!(verify_at(&lax, &provider, &hs("HS256", &claims), NOW).is_ok());
}

fn auth_with_secret_only() -> Auth {
    auth_from(&[("FAL_PROXY_AUTH_JWT_SECRET", SECRET)])
}

#[test]
fn forged_confused_and_malformed_tokens_are_refused() {
    let auth = jwks_auth();
    let provider = FakeProvider::serving(all_keys_jwks());
    let good = signed(&TestKey::rsa(), "RS256", "rsa", &claims());
    let (header, rest) = good.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let rsa_jwk = TestKey::rsa().jwk("rsa", None);

    let mut cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!("{}.{payload}.", b64(br#"{"alg":"none"}"#)),
        ),
        (
            "alg none with a signature",
            format!(
                "{}.{payload}.{signature}",
                b64(br#"{"alg":"none","kid":"rsa"}"#)
            ),
        ),
        (
            "HMAC signed with the RSA public key (n) as the secret",
            token_with(&json!({"alg": "HS256", "kid": "rsa"}), &claims(), |m| {
                hmac("HS256", rsa_jwk["n"].as_str().unwrap().as_bytes(), m)
            }),
        ),
        (
            "HMAC signed with the JWK JSON as the secret",
            token_with(&json!({"alg": "HS256", "kid": "rsa"}), &claims(), |m| {
                hmac("HS256", rsa_jwk.to_string().as_bytes(), m)
            }),
        ),
        (
            "a key from another JWKS",
            signed(&TestKey::other_rsa(), "RS256", "rsa", &claims()),
        ),
        (
            "an unknown kid",
            signed(&TestKey::other_rsa(), "RS256", "not-there", &claims()),
        ),
        (
            "ES256 with the RSA key's kid",
            signed(&TestKey::p256(), "ES256", "rsa", &claims()),
        ),
        (
            "RS384 where the key declares ES256",
            signed(&TestKey::rsa(), "RS384", "p256", &claims()),
        ),
        (
            "tampered payload",
            format!(
                "{header}.{}.{signature}",
                b64(
                    json!({"sub": "admin", "exp": NOW + 600, "iss": ISSUER, "aud": "my-app"})
                        .to_string()
                        .as_bytes()
                )
            ),
        ),
        (
            "tampered header",
            format!(
                "{}.{payload}.{signature}",
                b64(br#"{"alg":"RS512","kid":"rsa"}"#)
            ),
        ),
        (
            "crit header",
            token_with(
                &json!({"alg": "HS256", "crit": ["exp"], "exp": 1}),
                &claims(),
                |m| hmac("HS256", SECRET.as_bytes(), m),
            ),
        ),
        (
            "wrong HMAC secret",
            token_with(&json!({"alg": "HS256"}), &claims(), |m| {
                hmac("HS256", b"another-secret-another-secret-another", m)
            }),
        ),
        ("two parts", format!("{header}.{payload}")),
        ("four parts", format!("{good}.{signature}")),
        ("empty signature", format!("{header}.{payload}.")),
        ("not base64", format!("{header}.{payload}.!!!")),
        (
            "header not JSON",
            format!("{}.{payload}.{signature}", b64(b"alg")),
        ),
        (
            "header an array",
            format!("{}.{payload}.{signature}", b64(b"[]")),
        ),
        (
            "payload not JSON",
            format!("{header}.{}.{signature}", b64(b"sub")),
        ),
        (
            "kid a number",
            format!(
                "{}.{payload}.{signature}",
                b64(br#"{"alg":"RS256","kid":1}"#)
            ),
        ),
        (
            "unknown alg",
            format!("{}.{payload}.{signature}", b64(br#"{"alg":"ES512"}"#)),
        ),
        ("empty", String::new()),
    ];
    cases.push(("padding", format!("{good}==")));
    for (name, token) in cases {
        assert_eq!(
            verify_at(&auth, &provider, &token, NOW),
            Err(ProxyError::Unauthenticated),
            "{name}"
        );
    }

    // HMAC tokens are refused when only a JWKS is configured, and
    // asymmetric ones when only a secret is.
    let jwks_only = auth_from(&[(
        "FAL_PROXY_AUTH_JWKS_URL",
        "https://issuer.example/.well-known/jwks.json",
    )]);
    assert_eq!(
        verify_at(&jwks_only, &provider, &hs("HS256", &claims()), NOW),
        Err(ProxyError::Unauthenticated)
    );
    assert_eq!(
        verify_at(&auth_with_secret_only(), &provider, &good, NOW),
        Err(ProxyError::Unauthenticated)
    );
}

#[test]
fn a_key_set_never_verifies_hmac_nor_keys_it_declares_for_other_algorithms() {
    // An `oct` key in a JWKS is ignored: the HS256 token made with it fails.
    let auth = auth_from(&[(
        "FAL_PROXY_AUTH_JWKS_URL",
        "https://issuer.example/.well-known/jwks.json",
    )]);
    let provider = FakeProvider::serving(json!({"keys": [
        {"kty": "oct", "kid": "k", "k": b64(SECRET.as_bytes()), "alg": "HS256"},
        TestKey::ed().jwk("ed", None),
        TestKey::rsa().jwk("enc", None).as_object().cloned().map(|mut k| { k.insert("use".into(), json!("enc")); Value::Object(k) }).unwrap(),
        {"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": b64(&[1; 16])},
    ]}));
    let hmac_token = token_with(&json!({"alg": "HS256", "kid": "k"}), &claims(), |m| {
        hmac("HS256", SECRET.as_bytes(), m)
    });
    assert_eq!(
        verify_at(&auth, &provider, &hmac_token, NOW),
        Err(ProxyError::Unauthenticated)
    );
    let enc = signed(&TestKey::rsa(), "RS256", "enc", &claims());
    assert_eq!(
        verify_at(&auth, &provider, &enc, NOW),
        Err(ProxyError::Unauthenticated)
    );
    let short = signed(&TestKey::ed(), "EdDSA", "short", &claims());
    assert_eq!(
        verify_at(&auth, &provider, &short, NOW),
        Err(ProxyError::Unauthenticated)
    );
    assert!(
        verify_at(
            &auth,
            &provider,
            &signed(&TestKey::ed(), "EdDSA", "ed", &claims()),
            NOW
        )
        .is_ok()
    );
}

#[test]
fn rotation_unknown_kids_and_a_provider_that_is_down() {
    let auth = jwks_auth();
    let provider = FakeProvider::serving(json!({"keys": [TestKey::ed().jwk("old", None)]}));
    let old = signed(&TestKey::ed(), "EdDSA", "old", &claims());
    assert!(verify_at(&auth, &provider, &old, NOW).is_ok());
    assert_eq!(provider.fetches.get(), 1);

    // The provider publishes a new key; a token signed with it arrives.
    provider.then(Ok(
        json!({"keys": [TestKey::ed().jwk("old", None), TestKey::p256().jwk("new", None)]}),
    ));
    let new = signed(&TestKey::p256(), "ES256", "new", &claims());
    // Within the refetch interval the unknown kid is refused without a fetch...
    assert_eq!(
        verify_at(&auth, &provider, &new, NOW + 1),
        Err(ProxyError::Unauthenticated)
    );
    assert_eq!(provider.fetches.get(), 1);
    // ...after it, one refetch brings the new key.
    let later = NOW + REFETCH_INTERVAL_SECS;
    let r = verify_at(&auth, &provider, &new, later);
    assert!(r.is_ok(), "{r:?} after {} fetches", provider.fetches.get());
    assert_eq!(provider.fetches.get(), 2);

    // A stream of garbage kids costs at most one fetch per interval.
    for i in 0..50 {
        let garbage = signed(
            &TestKey::p256(),
            "ES256",
            &format!("garbage-{i}"),
            &claims(),
        );
        let _ = verify_at(&auth, &provider, &garbage, later + 1 + i);
    }
    assert_eq!(
        provider.fetches.get(),
        2 + 50 / REFETCH_INTERVAL_SECS as usize,
        "one refetch per interval for a garbage kid a second"
    );

    // The provider goes down: cached keys keep working, stale or not.
    provider.then(Err(KeySetError::Timeout));
    let stale = later + 24 * 3600;
    let fetches = provider.fetches.get();
    let mut long_lived = claims();
    long_lived["exp"] = json!(stale + 600);
    let old = signed(&TestKey::ed(), "EdDSA", "old", &long_lived);
    let new = signed(&TestKey::p256(), "ES256", "new", &long_lived);
    assert!(verify_at(&auth, &provider, &old, stale).is_ok());
    assert_eq!(
        provider.fetches.get(),
        fetches + 1,
        "a stale set is refreshed, and kept when that fails"
    );
    assert!(verify_at(&auth, &provider, &new, stale + 1).is_ok());
    assert_eq!(
        provider.fetches.get(),
        fetches + 1,
        "no retry within the interval"
    );
}

#[test]
fn no_keys_and_a_provider_that_is_down_is_unavailable_not_unauthenticated() {
    let auth = jwks_auth();
    let provider = FakeProvider::serving(json!({}));
    provider.then(Err(KeySetError::Unreachable));
    let token = signed(&TestKey::ed(), "EdDSA", "ed", &claims());
    assert_eq!(
        verify_at(&auth, &provider, &token, NOW),
        Err(ProxyError::AuthUnavailable)
    );
    assert_eq!(
        verify_at(&auth, &provider, &token, NOW + 1),
        Err(ProxyError::AuthUnavailable)
    );
    assert_eq!(provider.fetches.get(), 1, "no retry within the interval");
    // The provider is back.
    provider.then(Ok(json!({"keys": [TestKey::ed().jwk("ed", None)]})));
    assert!(verify_at(&auth, &provider, &token, NOW + REFETCH_INTERVAL_SECS).is_ok());
    // HMAC tokens never need the provider.
    let fresh = jwks_auth();
    let down = FakeProvider::serving(json!({}));
    down.then(Err(KeySetError::Unreachable));
    assert!(verify_at(&fresh, &down, &hs("HS256", &claims()), NOW).is_ok());
    assert_eq!(down.fetches.get(), 0);
}

#[test]
fn concurrent_requests_share_one_fetch() {
    let auth = jwks_auth();
    let provider = FakeProvider::serving(all_keys_jwks());
    let token = Bearer(signed(&TestKey::ed(), "EdDSA", "ed", &claims()));
    let results = run(async {
        let all = (0..20).map(|_| auth.authenticate(&token, NOW, &provider));
        futures_util::future::join_all(all).await
    });
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(provider.fetches.get(), 1);
}

#[test]
fn bearer_header_parsing() {
    let header = |values: &[&str]| {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::AUTHORIZATION, value.parse().unwrap());
        }
        bearer(&headers).map(|b| b.0)
    };
    assert_eq!(header(&["Bearer a.b.c"]), Ok("a.b.c".to_owned()));
    assert_eq!(header(&["bearer a.b.c"]), Ok("a.b.c".to_owned()));
    let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
    for bad in [
        &["Basic dXNlcjpwYXNz"][..],
        &["Bearer"],
        &["Bearer "],
        &["Key fal-key"],
        &["a.b.c"],
        &["Bearer a.b.c", "Bearer a.b.c"],
        &["Bearer a.b.c d"],
        &["Bearer a+b/c="],
        &[long.as_str()],
        &[],
    ] {
        assert_eq!(header(bad), Err(ProxyError::Unauthenticated), "{bad:?}");
    }
}

#[test]
fn settings() {
    let parse = |pairs: &[(&str, &str)]| {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        Auth::from_lookup(|name| map.get(name).map(|v| (*v).to_owned()))
    };
    assert!(parse(&[]).unwrap().is_none());
    assert!(
        parse(&[("FAL_PROXY_AUTH_JWKS_URL", "http://127.0.0.1:9/jwks")])
            .unwrap()
            .is_some()
    );
    assert!(
        parse(&[("FAL_PROXY_AUTH_JWKS_URL", "http://localhost:9/jwks")])
            .unwrap()
            .is_some()
    );
    for (pairs, var) in [
        (
            &[("FAL_PROXY_AUTH_JWKS_URL", "http://issuer.example/jwks")][..],
            vars::AUTH_JWKS_URL,
        ),
        (
            &[("FAL_PROXY_AUTH_JWKS_URL", "issuer.example/jwks")],
            vars::AUTH_JWKS_URL,
        ),
        (
            &[("FAL_PROXY_AUTH_JWKS_URL", "https://u:p@issuer.example/jwks")],
            vars::AUTH_JWKS_URL,
        ),
        (
            &[("FAL_PROXY_AUTH_JWKS_URL", "ftp://127.0.0.1/jwks")],
            vars::AUTH_JWKS_URL,
        ),
        (
            &[("FAL_PROXY_AUTH_JWT_SECRET", "short")],
            vars::AUTH_JWT_SECRET,
        ),
        (&[("FAL_PROXY_AUTH_ISSUER", ISSUER)], vars::AUTH_ISSUER),
        (&[("FAL_PROXY_AUTH_AUDIENCE", "app")], vars::AUTH_AUDIENCE),
    ] {
        let error = parse(pairs).expect_err(&format!("{pairs:?}"));
        assert_eq!(error.var, var);
        assert!(
            !error.to_string().contains("short"),
            "the value is not echoed"
        );
    }
    let shown = format!("{:?} {}", jwks_auth(), jwks_auth().summary());
    assert!(!shown.contains(SECRET), "{shown}");
}

#[test]
fn identity_tags_are_short_stable_and_do_not_show_the_subject() {
    let key = [7u8; 32];
    let a = Identity::new("user-123", &key);
    let b = Identity::new("user-124", &key);
    assert_eq!(a.tag().len(), 12);
    assert!(a.tag().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(a.tag(), Identity::new("user-123", &key).tag());
    assert_ne!(a.tag(), b.tag());
    assert_ne!(
        a.tag(),
        Identity::new("user-123", &[8u8; 32]).tag(),
        "keyed"
    );
    assert!(!format!("{a:?}").contains("user-123"));
}

#[test]
fn verified_tokens_are_remembered_until_they_expire_or_the_key_set_changes() {
    let auth = jwks_auth();
    let provider = FakeProvider::serving(json!({"keys": [TestKey::ed().jwk("ed", None)]}));
    let token = signed(&TestKey::ed(), "EdDSA", "ed", &claims());
    assert!(verify_at(&auth, &provider, &token, NOW).is_ok());
    assert!(verify_at(&auth, &provider, &token, NOW + 1).is_ok());
    // Remembered or not, a token's claims stop holding at exp + leeway.
    assert_eq!(
        verify_at(&auth, &provider, &token, NOW + 600 + LEEWAY_SECS),
        Err(ProxyError::Unauthenticated)
    );

    // The provider withdraws the key: once the proxy has the new set, a
    // token verified with the old one is checked again, and refused.
    let auth = jwks_auth();
    assert!(verify_at(&auth, &provider, &token, NOW).is_ok());
    provider.then(Ok(json!({"keys": [TestKey::p256().jwk("p256", None)]})));
    let later = NOW + REFETCH_INTERVAL_SECS;
    let other = signed(&TestKey::p256(), "ES256", "p256", &claims());
    assert!(verify_at(&auth, &provider, &other, later).is_ok());
    assert_eq!(
        verify_at(&auth, &provider, &token, later + 1),
        Err(ProxyError::Unauthenticated)
    );
}

/// Security review (authreview): a JWKS token verified while the key set is
/// stale (the refresh failed, or another request is refreshing) is
/// remembered with no key-set version, which `remembered` takes for an HMAC
/// token: it then survives the provider withdrawing its key until its exp.
#[test]
fn a_token_verified_with_stale_keys_is_not_remembered_past_a_key_removal() {
    let auth = jwks_auth();
    let provider = FakeProvider::serving(json!({"keys": [TestKey::ed().jwk("ed", None)]}));
    let mut long_lived = claims();
    long_lived["exp"] = json!(NOW + 24 * 3600);
    let token = signed(&TestKey::ed(), "EdDSA", "ed", &long_lived);
    assert!(verify_at(&auth, &provider, &token, NOW).is_ok());

    // The keys go stale (max-age=600) while the provider is down: the last
    // good keys are used, as the issue asks.
    provider.then(Err(KeySetError::Timeout));
    let stale = NOW + 600;
    assert!(verify_at(&auth, &provider, &token, stale).is_ok());
    assert_eq!(provider.fetches.get(), 2);

    // The provider is back and has withdrawn the key; the proxy has the new
    // set (fetched for a token of the new key).
    provider.then(Ok(json!({"keys": [TestKey::p256().jwk("p256", None)]})));
    let later = stale + REFETCH_INTERVAL_SECS;
    let other = signed(&TestKey::p256(), "ES256", "p256", &long_lived);
    assert!(verify_at(&auth, &provider, &other, later).is_ok());
    assert_eq!(provider.fetches.get(), 3);

    // The token of the withdrawn key must now be refused.
    assert_eq!(
        verify_at(&auth, &provider, &token, later + 1),
        Err(ProxyError::Unauthenticated),
        "a token of a withdrawn key is still accepted from memory"
    );
}

/// A provider like the Worker's: requests never wait for another's fetch,
/// and each fetch takes a while (yields before answering).
struct SlowUnsharedProvider(FakeProvider);

impl KeySetSource for SlowUnsharedProvider {
    async fn fetch_key_set(&self, url: &str) -> Result<KeySetDocument, KeySetError> {
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        self.0.fetch_key_set(url).await
    }

    fn shares_fetches(&self) -> bool {
        false
    }
}

/// Security review (authreview): on a target that does not share fetches
/// (the Worker), every request with an unknown `kid` that arrives while a
/// fetch is in flight starts its own fetch, since the refetch interval only
/// counts from a finished attempt. A stream of garbage kids during a slow
/// JWKS answer becomes a stream of JWKS requests.
#[test]
fn garbage_kids_during_a_fetch_do_not_each_fetch_when_fetches_are_not_shared() {
    let auth = jwks_auth();
    let provider = SlowUnsharedProvider(FakeProvider::serving(
        json!({"keys": [TestKey::ed().jwk("ed", None)]}),
    ));
    let token = signed(&TestKey::ed(), "EdDSA", "ed", &claims());
    assert!(run(auth.authenticate(&Bearer(token), NOW, &provider)).is_ok());
    assert_eq!(provider.0.fetches.get(), 1);

    let later = NOW + REFETCH_INTERVAL_SECS;
    let garbage: Vec<Bearer> = (0..20)
        .map(|i| {
            Bearer(signed(
                &TestKey::ed(),
                "EdDSA",
                &format!("garbage-{i}"),
                &claims(),
            ))
        })
        .collect();
    let results = run(async {
        let all = garbage
            .iter()
            .map(|token| auth.authenticate(token, later, &provider));
        futures_util::future::join_all(all).await
    });
    assert!(results.iter().all(Result::is_err));
    assert_eq!(
        provider.0.fetches.get(),
        2,
        "20 concurrent garbage kids started {} JWKS fetches",
        provider.0.fetches.get() - 1
    );
}

/// A provider whose answer takes a while; counts the fetches started.
struct Slow {
    inner: FakeProvider,
    started: Cell<usize>,
}

impl KeySetSource for Slow {
    async fn fetch_key_set(&self, url: &str) -> Result<KeySetDocument, KeySetError> {
        self.started.set(self.started.get() + 1);
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        self.inner.fetch_key_set(url).await
    }
}

/// Security review (authreview): the refetch interval counts only from a
/// fetch that finished. A request whose future is dropped mid-fetch (its
/// client went away, or a platform cancelled it) leaves no trace, so garbage
/// kids whose requests are abandoned during the fetch each start a new one.
#[test]
fn an_abandoned_fetch_still_counts_against_the_refetch_interval() {
    use futures_util::FutureExt as _;
    let auth = jwks_auth();
    let provider = Slow {
        inner: FakeProvider::serving(json!({"keys": [TestKey::ed().jwk("ed", None)]})),
        started: Cell::new(0),
    };
    let token = signed(&TestKey::ed(), "EdDSA", "ed", &claims());
    assert!(run(auth.authenticate(&Bearer(token), NOW, &provider)).is_ok());
    assert_eq!(provider.started.get(), 1);

    let later = NOW + REFETCH_INTERVAL_SECS;
    for i in 0..10 {
        let garbage = Bearer(signed(
            &TestKey::ed(),
            "EdDSA",
            &format!("garbage-{i}"),
            &claims(),
        ));
        // Polled once (the first one's fetch starts), then dropped.
        let _ = auth.authenticate(&garbage, later, &provider).now_or_never();
    }
    assert_eq!(
        provider.started.get(),
        2,
        "10 abandoned garbage-kid requests started {} JWKS fetches",
        provider.started.get() - 1
    );
}

/// Security review (authreview): edges that hold.
#[test]
fn review_jwks_url_edges() {
    let parse = |url: &str| {
        Auth::from_lookup(|name| (name == "FAL_PROXY_AUTH_JWKS_URL").then(|| url.to_owned()))
    };
    for refused in [
        "http://127.0.0.1.evil.example/jwks",
        "http://localhost.evil.example/jwks",
        "http://localhost./jwks",
        "http://user@127.0.0.1/jwks",
        "http://127.0.0.1@evil.example/jwks",
        "http://[::ffff:127.0.0.1]/jwks",
        "http://0.0.0.0/jwks",
        "http://evil.example#@127.0.0.1/jwks",
        "file:///etc/passwd",
        "https://issuer.example/jwks#frag",
        "",
    ] {
        assert!(parse(refused).is_err(), "{refused}");
    }
    for accepted in [
        "http://[::1]:9/jwks",
        "http://0x7f.1/jwks",
        "http://127.1/jwks",
        "HTTP://LOCALHOST/jwks",
        " https://issuer.example/jwks ",
    ] {
        assert!(matches!(parse(accepted), Ok(Some(_))), "{accepted}");
    }
}

#[test]
fn review_weak_keys_and_malleable_signatures() {
    let auth = jwks_auth();
    // Ed25519 identity point as the key, and the (R = identity, s = 0)
    // signature that verifies any message under a non-strict check.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let provider = FakeProvider::serving(json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "x": b64(&identity), "kid": "weak"},
        TestKey::ed().jwk("ed", None),
    ]}));
    let mut sig = [0u8; 64];
    sig[0] = 1;
    let forged = token_with(&json!({"alg": "EdDSA", "kid": "weak"}), &claims(), |_| {
        sig.to_vec()
    });
    assert_eq!(
        verify_at(&auth, &provider, &forged, NOW),
        Err(ProxyError::Unauthenticated)
    );
    // RSA with e = 1 (signature = message) and a 512-bit modulus are not keys.
    for body in [
        json!({"keys": [{"kty": "RSA", "n": b64(&[0xffu8; 256]), "e": "AQ"}]}),
        json!({"keys": [{"kty": "RSA", "n": b64(&[0xffu8; 64]), "e": "AQAB"}]}),
        json!({"keys": [{"kty": "EC", "crv": "P-256", "x": b64(&[1u8; 32]), "y": b64(&[2u8; 32])}]}),
        json!({"keys": [{"kty": "EC", "crv": "P-256", "x": b64(&[0u8; 32]), "y": b64(&[0u8; 32])}]}),
    ] {
        assert!(
            super::jwks::KeySet::parse(body.to_string().as_bytes()).is_err(),
            "{body}"
        );
    }
}

/// Security review (authreview), informational: ECDSA signatures are
/// malleable (s and n - s both verify), so one ES256 token has a second
/// valid spelling. It names the same user with the same claims; the
/// remembered-token map then holds two entries for it.
#[test]
fn review_es256_high_s_spelling_verifies() {
    let auth = jwks_auth();
    let provider = FakeProvider::serving(json!({"keys": [TestKey::p256().jwk("p256", None)]}));
    let token = signed(&TestKey::p256(), "ES256", "p256", &claims());
    let (message, signature) = token.rsplit_once('.').unwrap();
    let signature =
        p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
    let (r, s) = signature.split_scalars();
    let flipped = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
    let other = format!("{message}.{}", b64(&flipped.to_bytes()));
    assert_ne!(other, token);
    assert!(verify_at(&auth, &provider, &token, NOW).is_ok());
    assert!(verify_at(&auth, &provider, &other, NOW).is_ok());
}

/// Security review (authreview), a policy proposal: Google's securetoken
/// JWKS signs the ID tokens of EVERY Firebase project, so with it and no
/// `FAL_PROXY_AUTH_AUDIENCE` anyone who signs in to a Firebase project of
/// their own (free, self-serve) spends this deployment's key. Today the
/// setting is accepted silently (no error, no warning); this test asks for a
/// refusal naming the audience setting (a loud start-up warning would also
/// do; the lead decides).
#[test]
fn a_shared_firebase_key_set_without_an_audience_is_refused() {
    let firebase =
        "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com";
    let result =
        Auth::from_lookup(|name| (name == "FAL_PROXY_AUTH_JWKS_URL").then(|| firebase.to_owned()));
    let error = result.expect_err(
        "a key set shared by every Firebase project, with no audience, accepts other projects' users",
    );
    assert_eq!(error.var, vars::AUTH_AUDIENCE);
}

/// Security review (authreview): odd RSA JWK encodings (leading zero bytes in
/// `n` or `e`, empty or huge values) neither panic nor verify a forgery.
#[test]
fn review_odd_rsa_encodings_do_not_panic() {
    use rsa::traits::PublicKeyParts as _;
    let public = rsa_key().to_public_key();
    let (n, e) = (public.n_bytes().to_vec(), public.e_bytes().to_vec());
    let padded = |bytes: &[u8], zeros: usize| [vec![0u8; zeros], bytes.to_vec()].concat();
    let token = signed(&TestKey::rsa(), "RS256", "k", &claims());
    let ps = signed(&TestKey::rsa(), "PS256", "k", &claims());
    for (n, e) in [
        (padded(&n, 1), e.clone()),
        (padded(&n, 300), e.clone()),
        (n.clone(), padded(&e, 300)),
        (n.clone(), padded(&e, 1000)),
        (vec![], e.clone()),
        (n.clone(), vec![]),
        (vec![0; 512], e.clone()),
        (n.clone(), n.clone()),
        (vec![0xff; 513], e.clone()),
    ] {
        let jwks = json!({"keys": [{"kty": "RSA", "kid": "k", "n": b64(&n), "e": b64(&e)}]});
        let provider = FakeProvider::serving(jwks);
        for token in [&token, &ps] {
            let auth = jwks_auth();
            let _ = verify_at(&auth, &provider, token, NOW);
        }
        // A signature of the wrong length, all zeros, all ones.
        for signature in [
            vec![0u8; 256],
            vec![0xffu8; 256],
            vec![0u8; 300],
            vec![1u8; 1],
        ] {
            let (message, _) = token.rsplit_once('.').unwrap();
            let forged = format!("{message}.{}", b64(&signature));
            let auth = jwks_auth();
            assert!(verify_at(&auth, &provider, &forged, NOW).is_err());
        }
    }
}

/// Security review (authreview), low: an issuer or audience setting that is
/// set but holds no value (`FAL_PROXY_AUTH_AUDIENCE=` from a template, or
/// `","`) silently turns its check off, the same as leaving it unset.
#[test]
fn an_issuer_or_audience_set_to_nothing_is_an_error_not_no_check() {
    // An empty value means unset, as for every setting (Config::from_lookup
    // drops it before this sees it); a value that lists nothing is an error.
    for (var, value) in [
        ("FAL_PROXY_AUTH_AUDIENCE", " , "),
        ("FAL_PROXY_AUTH_ISSUER", ","),
    ] {
        let result = Auth::from_lookup(|name| match name {
            "FAL_PROXY_AUTH_JWKS_URL" => Some("https://issuer.example/jwks.json".to_owned()),
            name if name == var => Some(value.to_owned()),
            _ => None,
        });
        let error = result.expect_err(&format!("{var}={value:?} is taken as no check"));
        assert_eq!(error.var, var);
    }
}

/// A provider for threads: odd fetches serve `first`, even ones `second`.
struct Alternating {
    first: Bytes,
    second: Bytes,
    fetches: std::sync::atomic::AtomicUsize,
}

impl KeySetSource for Alternating {
    async fn fetch_key_set(&self, _url: &str) -> Result<KeySetDocument, KeySetError> {
        let n = self
            .fetches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        Ok(KeySetDocument {
            body: if n % 2 == 1 {
                self.first.clone()
            } else {
                self.second.clone()
            },
            cache_control: Some("max-age=600".to_owned()),
        })
    }
}

/// Security review (authreview): natively requests verify on several
/// threads. A token is verified with the key set `keys()` returned, but
/// remembered with the version `fresh_version` reads afterwards; a fetch
/// that lands in between (on another thread) stores a set without the
/// token's key, and the token is remembered as verified by that set.
#[test]
fn a_token_is_remembered_with_the_version_of_the_keys_that_verified_it() {
    let auth = jwks_auth();
    let provider = Alternating {
        first: Bytes::from(json!({"keys": [TestKey::ed().jwk("k1", None)]}).to_string()),
        second: Bytes::from(json!({"keys": [TestKey::p256().jwk("k2", None)]}).to_string()),
        fetches: Default::default(),
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mine: std::sync::Mutex<Vec<[u8; 32]>> = Default::default();
    std::thread::scope(|scope| {
        // Fetches, one per refetch interval of its own clock, each swapping the set.
        scope.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let garbage = Bearer(signed(&TestKey::ed(), "EdDSA", "garbage", &claims()));
            let mut i = 1;
            while std::time::Instant::now() < deadline && i < 50_000 {
                let _ = rt.block_on(auth.authenticate(
                    &garbage,
                    NOW + REFETCH_INTERVAL_SECS * i,
                    &provider,
                ));
                i += 1;
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        // Verifies fresh tokens of k1 (in the odd sets only).
        scope.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let mut j = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && j < 200_000 {
                let mut c = claims();
                c["jti"] = json!(j);
                c["exp"] = json!(NOW + 10 * 24 * 3600);
                let token = signed(&TestKey::ed(), "EdDSA", "k1", &c);
                if rt
                    .block_on(auth.authenticate(&Bearer(token.clone()), NOW, &provider))
                    .is_ok()
                {
                    mine.lock()
                        .unwrap()
                        .push(Sha256::digest(token.as_bytes()).into());
                }
                j += 1;
            }
        });
    });
    let memory = auth.verified.lock().unwrap();
    let accepted = mine.lock().unwrap();
    assert!(!accepted.is_empty(), "no k1 token was ever verified");
    let wrong: Vec<_> = accepted
        .iter()
        .filter_map(|digest| memory.get(digest))
        .filter(|entry| entry.version.is_some_and(|v| v % 2 == 0))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} k1 tokens are remembered as verified by a key set without k1",
        wrong.len(),
        accepted.len()
    );
}

/// Security review (authreview): the same as
/// `a_token_verified_with_stale_keys_is_not_remembered_past_a_key_removal`
/// with the provider up: while one request refreshes stale keys, the others
/// verify with the stale set and are remembered with no version. A holder
/// of a withdrawn (say, leaked) key who sends tokens at that moment keeps
/// them accepted until their exp, which they choose.
#[test]
fn tokens_verified_during_a_refresh_are_not_remembered_past_a_key_removal() {
    let auth = jwks_auth();
    let provider = Slow {
        inner: FakeProvider::serving(json!({"keys": [TestKey::ed().jwk("leaked", None)]})),
        started: Cell::new(0),
    };
    let mut forever = claims();
    forever["exp"] = json!(NOW + 100 * 365 * 24 * 3600);
    let warm = signed(&TestKey::ed(), "EdDSA", "leaked", &claims());
    assert!(run(auth.authenticate(&Bearer(warm), NOW, &provider)).is_ok());

    // The provider withdraws the leaked key; the cached set goes stale.
    provider
        .inner
        .then(Ok(json!({"keys": [TestKey::p256().jwk("new", None)]})));
    let stale = NOW + 600;
    let refreshing = Bearer(signed(&TestKey::p256(), "ES256", "new", &claims()));
    let leaked = Bearer(signed(&TestKey::ed(), "EdDSA", "leaked", &forever));
    let (first, second) = run(async {
        futures_util::future::join(
            auth.authenticate(&refreshing, stale, &provider),
            auth.authenticate(&leaked, stale, &provider),
        )
        .await
    });
    assert!(first.is_ok());
    // Verified with the stale set meanwhile: acceptable once.
    assert!(second.is_ok());
    assert_eq!(provider.started.get(), 2);
    // The new set is in place; the leaked key's token must now be refused.
    assert_eq!(
        run(auth.authenticate(&leaked, stale + 1, &provider)),
        Err(ProxyError::Unauthenticated),
        "a token of a withdrawn key is accepted from memory"
    );
}
