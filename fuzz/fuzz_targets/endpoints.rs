//! The endpoint allow-list: under `FAL_PROXY_ALLOW_ENDPOINTS`, a request to
//! `fal.run` or `queue.fal.run` is forwarded exactly when the reference
//! model allows the method and path; nothing outside the list gets through.

#![no_main]

use arbitrary::Arbitrary;
use fal_proxy_core::Decision;
use fal_proxy_core::Proxy;
use fal_proxy_fuzz::{assert_no_key_in_answer, endpoint_model, proxy};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::LazyLock;

/// The default allow-list, no endpoint list.
static OPEN: LazyLock<Proxy> = LazyLock::new(|| proxy(&[]).expect("default config"));

const PATTERN_PARTS: &[&str] = &[
    "fal-ai", "flux", "dev", "/", "*", "**", "-", "requests", "/**",
];
const PATH_PARTS: &[&str] = &[
    "fal-ai", "flux", "dev", "/", "requests", "r1", "status", "stream", "cancel", "..", ".", ";",
    "%2e", "%2F", "%25", "%c0%ae", "%u002e", "~", "-", "_", "x", "?", "?a=/b", "%", "//", "@", ":",
];
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"];

#[derive(Arbitrary, Debug)]
struct Input {
    patterns: Vec<Vec<u8>>,
    queue_host: bool,
    method: u8,
    path: Vec<u8>,
    raw_tail: Option<String>,
}

/// How many configured proxies are kept; past it the cache starts over.
const MAX_CACHED: usize = 4096;

thread_local! {
    /// Proxies by endpoint setting, `None` for a refused one: mutated inputs
    /// keep their list more often than not, and building a proxy costs more
    /// than the check under test.
    static LISTED: RefCell<HashMap<String, Option<Rc<Proxy>>>> = RefCell::default();
}

/// The proxy configured with `setting` as its endpoint list.
fn listed(setting: &str) -> Option<Rc<Proxy>> {
    LISTED.with_borrow_mut(|cache| {
        if let Some(known) = cache.get(setting) {
            return known.clone();
        }
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        let built = proxy(&[("FAL_PROXY_ALLOW_ENDPOINTS", setting)]).map(Rc::new);
        cache.insert(setting.to_owned(), built.clone());
        built
    })
}

fn join(parts: &[&str], picks: &[u8]) -> String {
    picks
        .iter()
        .map(|&pick| parts[usize::from(pick) % parts.len()])
        .collect()
}

fuzz_target!(|input: Input| {
    let patterns: Vec<String> = input
        .patterns
        .iter()
        .take(4)
        .map(|picks| join(PATTERN_PARTS, &picks[..picks.len().min(8)]))
        .filter(|pattern| !pattern.is_empty())
        .collect();
    // An empty setting is no list at all.
    if patterns.is_empty() {
        return;
    }
    let setting = patterns.join(",");
    let Some(listed) = listed(&setting) else {
        return;
    };
    let host = if input.queue_host {
        "queue.fal.run"
    } else {
        "fal.run"
    };
    let mut path = join(PATH_PARTS, &input.path[..input.path.len().min(12)]);
    if let Some(tail) = &input.raw_tail {
        path.push_str(tail);
    }
    let target = format!("https://{host}/{path}");
    let method = METHODS[usize::from(input.method) % METHODS.len()];
    let build = || {
        http::Request::builder()
            .method(method)
            .uri("/api/fal/proxy")
            .header("x-fal-target-url", target.as_str())
            .body(bytes::Bytes::new())
            .ok()
    };
    let (Some(for_open), Some(for_listed)) = (build(), build()) else {
        return;
    };
    // Only targets the URL allow-list forwards say anything about the endpoint list.
    if !matches!(OPEN.request_filter(for_open), Decision::Forward(..)) {
        return;
    }
    let decision = listed.request_filter(for_listed);
    assert_no_key_in_answer(&decision);
    let Ok(url) = url::Url::parse(&target) else {
        return;
    };
    let trimmed: Vec<String> = patterns
        .iter()
        .map(|p| p.trim_matches('/').to_owned())
        .collect();
    let model = endpoint_model::allows(&trimmed, input.queue_host, method, url.path());
    let forwarded = matches!(decision, Decision::Forward(..));
    assert_eq!(
        forwarded,
        model,
        "{method} {target} (path {:?}) with {trimmed:?}",
        url.path()
    );
});
