//! The header policy, browser to fal: only the allowed headers go upstream,
//! never one the browser names in `Connection`, with exactly one
//! `authorization` carrying the right key and no key anywhere else.
//!
//! App-user authentication (`Authorization: Bearer <jwt>`) has its own
//! target, `jwt`: tokens against a reference model of the verifier, straight
//! and through the request phase, never forwarded or echoed.

#![no_main]

use arbitrary::Arbitrary;
use fal_proxy_core::{Decision, Proxy};
use fal_proxy_fuzz::{SERVER_KEY, USER_KEY, assert_no_key_in_answer, leaks, proxy};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

const NAMES: &[&str] = &[
    "content-type",
    "content-length",
    "accept",
    "user-agent",
    "x-fal-queue-priority",
    "x-fal-request-id",
    "x-fal-hop",
    "connection",
    "cookie",
    "authorization",
    "x-fal-user-key",
    "x-fal-target-url",
    "x-fal-client-proxy",
    "host",
    "transfer-encoding",
    "te",
    "upgrade",
    "keep-alive",
    "proxy-authorization",
    "origin",
    "x-forwarded-for",
    "expect",
    "x-fal-",
    "accept-encoding",
    "x-fal-store-io",
];
const MODES: &[&str] = &["server", "user", "user-or-server"];
const ALWAYS_SENT: &[&str] = &["authorization", "x-fal-client-proxy"];

/// One proxy per key mode, built once: the configuration is fixed.
static PROXIES: LazyLock<Vec<Proxy>> = LazyLock::new(|| {
    MODES
        .iter()
        .map(|mode| proxy(&[("FAL_PROXY_KEY_MODE", mode)]).expect("a key mode"))
        .collect()
});

#[derive(Arbitrary, Debug)]
struct Input {
    mode: u8,
    send_user_key: bool,
    headers: Vec<(u8, Vec<u8>)>,
    connection: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let pick = usize::from(input.mode) % MODES.len();
    let (mode, proxy) = (MODES[pick], &PROXIES[pick]);
    let mut builder = http::Request::post("/api/fal/proxy")
        .header("x-fal-target-url", "https://queue.fal.run/fal-ai/flux/dev");
    if input.send_user_key {
        builder = builder.header("x-fal-user-key", USER_KEY);
    }
    let connection: Vec<&str> = input
        .connection
        .iter()
        .take(6)
        .map(|&pick| NAMES[usize::from(pick) % NAMES.len()])
        .collect();
    if !connection.is_empty() {
        builder = builder.header("connection", connection.join(", "));
    }
    for (pick, value) in input.headers.iter().take(24) {
        let name = NAMES[usize::from(*pick) % NAMES.len()];
        let Ok(value) = http::HeaderValue::from_bytes(value) else {
            continue;
        };
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(bytes::Bytes::new()) else {
        return;
    };
    let incoming = request.headers().clone();
    let decision = proxy.request_filter(request);
    assert_no_key_in_answer(&decision);
    let Decision::Forward(sent, _) = decision else {
        return;
    };
    let sent = sent.headers();
    for (name, value) in sent {
        let name = name.as_str();
        let allowed = matches!(
            name,
            "content-type" | "content-length" | "accept" | "user-agent"
        ) || ALWAYS_SENT.contains(&name)
            || (name.starts_with("x-fal-")
                && name != "x-fal-target-url"
                && name != "x-fal-user-key");
        assert!(allowed, "{name} went upstream");
        if !ALWAYS_SENT.contains(&name) {
            assert!(
                !connection.iter().any(|hop| hop.eq_ignore_ascii_case(name)),
                "{name} is named in Connection but went upstream"
            );
            assert!(
                incoming.get_all(name).iter().any(|v| v == value),
                "{name} was changed"
            );
            assert!(!leaks(value.as_bytes()), "a key in {name}");
        }
    }
    let authorizations: Vec<_> = sent.get_all("authorization").iter().collect();
    assert_eq!(authorizations.len(), 1);
    let mut user_keys = incoming.get_all("x-fal-user-key").iter();
    let user_key = match (user_keys.next(), user_keys.next()) {
        // An empty value is a client with no key configured yet.
        (Some(key), None) => key
            .to_str()
            .ok()
            .filter(|key| !key.is_empty())
            .map(str::to_owned),
        _ => None,
    };
    let expected = match (mode, user_key) {
        ("server", _) | ("user-or-server", None) => format!("Key {SERVER_KEY}"),
        (_, Some(key)) => format!("Key {key}"),
        ("user", None) => panic!("forwarded in user mode without a user key"),
        _ => unreachable!(),
    };
    assert_eq!(authorizations[0], expected.as_str());
    assert_eq!(sent.get_all("x-fal-client-proxy").iter().count(), 1);
});
