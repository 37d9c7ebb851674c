//! The target check and the URL patterns: any `x-fal-target-url` is
//! forwarded exactly when the reference model of the default allow-list
//! allows it, to a URL on fal's hosts, and no answer holds a key; and
//! the target parser's fast path gives what the full WHATWG parse gives.

#![no_main]

use fal_proxy_core::{Decision, Proxy, Target, fuzzing};
use fal_proxy_fuzz::{SERVER_KEY, assert_no_key_in_answer, proxy, request, url_model};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static PROXY: LazyLock<Proxy> = LazyLock::new(|| proxy(&[]).expect("default config"));

fuzz_target!(|data: &[u8]| {
    // The fast path for canonical URLs changes nothing: same target, same error.
    assert_eq!(
        Target::parse(data),
        fuzzing::target_without_fast_path(data),
        "{:?}",
        String::from_utf8_lossy(data)
    );
    let Some(request) = request(&[("x-fal-target-url", data)]) else {
        return;
    };
    let decision = PROXY.request_filter(request);
    assert_no_key_in_answer(&decision);
    let forwarded = matches!(decision, Decision::Forward(..));
    assert_eq!(
        forwarded,
        url_model::allows(data),
        "{:?}",
        String::from_utf8_lossy(data)
    );
    if let Decision::Forward(sent, _) = decision {
        let uri = sent.uri();
        assert_eq!(uri.scheme_str(), Some("https"));
        assert!(matches!(
            uri.host(),
            Some("fal.run" | "queue.fal.run" | "rest.fal.ai" | "rest.alpha.fal.ai")
        ));
        assert_eq!(uri.port(), None);
        assert_eq!(
            sent.headers()["authorization"],
            format!("Key {SERVER_KEY}").as_str()
        );
    }
});
