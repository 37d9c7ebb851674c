//! Window arithmetic, what counts and what it costs, with a fake clock.

use super::upstash::{command, parse_answer};
use super::*;
use crate::config::Config;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

fn limits(pairs: &[(&str, &str)]) -> Result<Limits, crate::config::ConfigError> {
    let map: HashMap<&str, &str> = pairs.iter().copied().collect();
    Limits::from_lookup(|name| map.get(name).map(|v| (*v).to_owned()))
        .map(|limits| limits.expect("a limit is set"))
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// Hits `store` at `now` for `identity` with the cost of `endpoint`.
fn spend(limits: &Limits, store: &MemoryStore, identity: &str, cost: u64, now: u64) -> RateNote {
    let hit = limits.hit(identity, cost, now);
    let counted = block_on(store.hit(&hit)).expect("memory answers");
    limits.note(&hit, &counted)
}

#[test]
fn windows_parse() {
    let table: &[(&str, &[(u64, u64)])] = &[
        ("10/min", &[(60, 10)]),
        ("10/min,200/day", &[(60, 10), (86_400, 200)]),
        ("200/day 10/min", &[(60, 10), (86_400, 200)]),
        ("3/s", &[(1, 3)]),
        ("50/h", &[(3600, 50)]),
        ("100/5min", &[(300, 100)]),
        ("7/MIN", &[(60, 7)]),
    ];
    for (text, expected) in table {
        let limits = limits(&[("FAL_PROXY_RATE_LIMIT", text)]).expect(text);
        let got: Vec<(u64, u64)> = limits.windows.iter().map(|w| (w.secs, w.limit)).collect();
        assert_eq!(&got, expected, "{text}");
    }
    for bad in [
        "10",
        "0/min",
        "-1/min",
        "10/week",
        "10/0min",
        "x/min",
        "10/min,5/60s",
        "1/400day",
        "10/ min",
    ] {
        let error = limits(&[("FAL_PROXY_RATE_LIMIT", bad)]).expect_err(bad);
        assert_eq!(error.var, "FAL_PROXY_RATE_LIMIT", "{bad}");
    }
}

#[test]
fn settings_that_need_a_limit_or_each_other() {
    let map: HashMap<&str, &str> = [("FAL_PROXY_ENDPOINT_COSTS", "a/b=2")].into();
    let error = Limits::from_lookup(|name| map.get(name).map(|v| (*v).to_owned())).unwrap_err();
    assert_eq!(error.var, "FAL_PROXY_ENDPOINT_COSTS");
    let none = Limits::from_lookup(|_| None).expect("no limit is fine");
    assert!(none.is_none());

    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("FAL_PROXY_ENDPOINT_COSTS", "fal-ai/x=11")],
            "FAL_PROXY_ENDPOINT_COSTS",
        ),
        (
            &[("FAL_PROXY_ENDPOINT_COSTS", "fal-ai/x")],
            "FAL_PROXY_ENDPOINT_COSTS",
        ),
        (
            &[("FAL_PROXY_ENDPOINT_COSTS", "fal-ai/x=two")],
            "FAL_PROXY_ENDPOINT_COSTS",
        ),
        (
            &[("FAL_PROXY_ENDPOINT_COSTS", "fal-ai/%78=2")],
            "FAL_PROXY_ENDPOINT_COSTS",
        ),
        (
            &[("FAL_PROXY_RATE_STORE", "https://kv.example")],
            "FAL_PROXY_RATE_STORE_TOKEN",
        ),
        (
            &[("FAL_PROXY_RATE_STORE", "http://kv.example")],
            "FAL_PROXY_RATE_STORE",
        ),
        (
            &[("FAL_PROXY_RATE_STORE", "https://u:p@kv.example")],
            "FAL_PROXY_RATE_STORE",
        ),
        (
            &[("FAL_PROXY_RATE_STORE", "memcached://x")],
            "FAL_PROXY_RATE_STORE",
        ),
        (
            &[("FAL_PROXY_RATE_STORE", "redis://h/notanumber")],
            "FAL_PROXY_RATE_STORE",
        ),
        (
            &[("FAL_PROXY_RATE_STORE_TOKEN", "t")],
            "FAL_PROXY_RATE_STORE_TOKEN",
        ),
        (
            &[("FAL_PROXY_RATE_STORE_FAILURE", "maybe")],
            "FAL_PROXY_RATE_STORE_FAILURE",
        ),
    ];
    for (pairs, var) in cases {
        let mut all = vec![("FAL_PROXY_RATE_LIMIT", "10/min")];
        all.extend_from_slice(pairs);
        let error = limits(&all).expect_err(&format!("{pairs:?}"));
        assert_eq!(error.var, *var, "{pairs:?}");
    }
}

#[test]
fn the_store_setting_never_shows_credentials() {
    let redis = limits(&[
        ("FAL_PROXY_RATE_LIMIT", "10/min"),
        (
            "FAL_PROXY_RATE_STORE",
            "rediss://user:hunter2-secret@redis.example:6380/1",
        ),
    ])
    .unwrap();
    let upstash = limits(&[
        ("FAL_PROXY_RATE_LIMIT", "10/min"),
        ("FAL_PROXY_RATE_STORE", "https://eu1-kv.upstash.io"),
        ("FAL_PROXY_RATE_STORE_TOKEN", "AXtoken-secret"),
        ("FAL_PROXY_RATE_STORE_FAILURE", "open"),
    ])
    .unwrap();
    for shown in [
        format!("{redis:?} {}", redis.summary()),
        format!("{upstash:?} {}", upstash.summary()),
    ] {
        assert!(!shown.contains("secret"), "{shown}");
    }
    assert!(redis.summary().contains("redis.example:6380"));
    assert_eq!(upstash.failure(), Failure::Open);
    assert_eq!(redis.failure(), Failure::Closed);
    let config = Config::from_lookup(|name| match name {
        "FAL_PROXY_RATE_LIMIT" => Some("10/min".to_owned()),
        "FAL_PROXY_RATE_STORE" => Some("redis://:pw-secret@127.0.0.1:6379".to_owned()),
        _ => None,
    })
    .unwrap();
    let shown = format!("{config:?} {}", config.summary());
    assert!(!shown.contains("pw-secret"), "{shown}");
}

#[test]
fn window_arithmetic_with_a_fake_clock() {
    let limits = limits(&[("FAL_PROXY_RATE_LIMIT", "3/min,5/h")]).unwrap();
    let store = MemoryStore::new();
    let start = 1_800_000_000; // a whole hour (500,000 hours since the epoch)
    for (i, now) in [start, start + 10, start + 59].into_iter().enumerate() {
        let note = spend(&limits, &store, "u:a", 1, now);
        assert!(!note.refused());
        let left = 2 - i;
        let reset = 60 - (now - start);
        assert_eq!(
            note.limit,
            format!(
                "\"3/min\";r={left};t={reset}, \"5/h\";r={};t={}",
                4 - i,
                3600 - (now - start)
            )
        );
    }
    assert_eq!(
        note_policy(&limits, &store, start),
        "\"3/min\";q=3;w=60, \"5/h\";q=5;w=3600"
    );
    // The fourth in the same minute is refused, and costs nothing.
    let refused = spend(&limits, &store, "u:a", 1, start + 59);
    assert_eq!(refused.retry_after, Some(1));
    assert_eq!(refused.refused_by.as_deref(), Some("3/min"));
    // The next minute has room again, but only for two more this hour.
    assert!(!spend(&limits, &store, "u:a", 1, start + 60).refused());
    assert!(!spend(&limits, &store, "u:a", 1, start + 61).refused());
    let hourly = spend(&limits, &store, "u:a", 1, start + 62);
    assert_eq!(hourly.retry_after, Some(3600 - 62));
    assert_eq!(hourly.refused_by.as_deref(), Some("5/h"));
    // Another identity has its own budget.
    assert!(!spend(&limits, &store, "u:b", 1, start + 62).refused());
    // A new hour starts afresh.
    assert!(!spend(&limits, &store, "u:a", 1, start + 3600).refused());
}

fn note_policy(limits: &Limits, store: &MemoryStore, now: u64) -> String {
    let hit = limits.hit("u:probe", 0, now);
    let counted = block_on(store.hit(&hit)).unwrap();
    limits
        .note(&hit, &counted)
        .policy
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_refused_request_consumes_nothing_and_weights_add_up() {
    let limits = limits(&[
        ("FAL_PROXY_RATE_LIMIT", "200/day"),
        (
            "FAL_PROXY_ENDPOINT_COSTS",
            "fal-ai/kling-video/**=50,fal-ai/flux/dev=2",
        ),
    ])
    .unwrap();
    let store = MemoryStore::new();
    let now = 1_800_000_000;
    let kling = match limits.charge(
        &Method::POST,
        "queue.fal.run",
        "/fal-ai/kling-video/v2/master",
    ) {
        Charge::Cost(cost) => cost,
        Charge::Free => unreachable!(),
    };
    assert_eq!(kling, 50);
    for _ in 0..4 {
        assert!(!spend(&limits, &store, "u:a", kling, now).refused());
    }
    // The day is spent: a fifth video is refused, and so is one image.
    assert!(spend(&limits, &store, "u:a", kling, now).refused());
    assert!(spend(&limits, &store, "u:a", 1, now + 1).refused());

    let other = MemoryStore::new();
    for _ in 0..3 {
        assert!(!spend(&limits, &other, "u:b", kling, now).refused());
    }
    // 150 used: a video does not fit but 50 images do; refusals cost nothing.
    assert!(spend(&limits, &other, "u:b", 51, now).refused());
    for _ in 0..50 {
        assert!(!spend(&limits, &other, "u:b", 1, now).refused());
    }
    assert!(spend(&limits, &other, "u:b", 1, now).refused());
}

#[test]
fn what_counts_and_what_it_costs() {
    let limits = limits(&[
        ("FAL_PROXY_RATE_LIMIT", "100/min"),
        (
            "FAL_PROXY_ENDPOINT_COSTS",
            "fal-ai/kling-video/**=50,fal-ai/flux/dev=2",
        ),
    ])
    .unwrap();
    let get = Method::GET;
    let post = Method::POST;
    let put = Method::PUT;
    let table: &[(&Method, &str, &str, Charge)] = &[
        (&post, "fal.run", "/fal-ai/flux/dev", Charge::Cost(2)),
        (&post, "fal.run", "/fal-ai/flux/dev/stream", Charge::Cost(2)),
        (&post, "queue.fal.run", "/fal-ai/flux/dev", Charge::Cost(2)),
        (
            &post,
            "queue.fal.run",
            "/fal-ai/flux/schnell",
            Charge::Cost(1),
        ),
        (
            &post,
            "queue.fal.run",
            "/fal-ai/kling-video/v2/master/text-to-video",
            Charge::Cost(50),
        ),
        // Path tricks get the highest cost or their real one, never less.
        (
            &post,
            "queue.fal.run",
            "/fal-ai/Kling-Video/v2",
            Charge::Cost(50),
        ),
        (
            &post,
            "queue.fal.run",
            "//fal-ai//kling-video/v2",
            Charge::Cost(50),
        ),
        (
            &post,
            "queue.fal.run",
            "/fal-ai/kling-video%2Fv2",
            Charge::Cost(50),
        ),
        (
            &post,
            "queue.fal.run",
            "/fal-ai/%6bling-video/v2",
            Charge::Cost(50),
        ),
        (&post, "fal.run", "/fal-ai/flux/dev/", Charge::Cost(2)),
        // Token mints and upload initiates count.
        (&post, "rest.fal.ai", "/tokens/", Charge::Cost(1)),
        (&post, "rest.alpha.fal.ai", "/tokens/", Charge::Cost(1)),
        (
            &post,
            "rest.fal.ai",
            "/storage/upload/initiate",
            Charge::Cost(1),
        ),
        (
            &post,
            "rest.fal.ai",
            "/storage/upload/initiate-multipart",
            Charge::Cost(1),
        ),
        // Polls of a submitted request never count.
        (
            &get,
            "queue.fal.run",
            "/fal-ai/kling-video/requests/abc/status",
            Charge::Free,
        ),
        (
            &get,
            "queue.fal.run",
            "/fal-ai/kling-video/requests/abc/status/stream",
            Charge::Free,
        ),
        (
            &get,
            "queue.fal.run",
            "/fal-ai/kling-video/requests/abc",
            Charge::Free,
        ),
        (
            &Method::HEAD,
            "queue.fal.run",
            "/fal-ai/flux/requests/abc",
            Charge::Free,
        ),
        (
            &put,
            "queue.fal.run",
            "/fal-ai/kling-video/requests/abc/cancel",
            Charge::Free,
        ),
        // ... but only exactly those: anything else may start work.
        (
            &post,
            "queue.fal.run",
            "/fal-ai/kling-video/requests/abc",
            Charge::Cost(50),
        ),
        (
            &post,
            "queue.fal.run",
            "/fal-ai/kling-video/requests/abc/status",
            Charge::Cost(50),
        ),
        (
            &get,
            "queue.fal.run",
            "/fal-ai/kling-video/requests/abc/other",
            Charge::Cost(50),
        ),
        (
            &put,
            "queue.fal.run",
            "/fal-ai/kling-video/requests/abc/status",
            Charge::Cost(50),
        ),
        (
            &get,
            "queue.fal.run",
            "/fal-ai/kling-video/requests//status",
            Charge::Cost(50),
        ),
        (
            &get,
            "queue.fal.run",
            "/fal-ai/kling-video/requests/a%2Fb/status",
            Charge::Cost(50),
        ),
        (
            &get,
            "fal.run",
            "/fal-ai/kling-video/requests/abc/status",
            Charge::Cost(50),
        ),
    ];
    for (method, host, path, expected) in table {
        assert_eq!(
            &limits.charge(method, host, path),
            expected,
            "{method} {host}{path}"
        );
    }
}

#[test]
fn identities_group_ipv6_by_64_and_hash_users() {
    let v4 = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    assert_eq!(identity_key(None, Some(v4)), "ip:203.0.113.7");
    let mapped = IpAddr::V6(Ipv4Addr::new(203, 0, 113, 7).to_ipv6_mapped());
    assert_eq!(identity_key(None, Some(mapped)), "ip:203.0.113.7");
    let a: Ipv6Addr = "2001:db8:1:2:aaaa::1".parse().unwrap();
    let b: Ipv6Addr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
    let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(identity_key(None, Some(a.into())), "ip:2001:db8:1:2::/64");
    assert_eq!(
        identity_key(None, Some(a.into())),
        identity_key(None, Some(b.into()))
    );
    assert_ne!(
        identity_key(None, Some(a.into())),
        identity_key(None, Some(c.into()))
    );
    assert_eq!(identity_key(None, None), "ip:unknown");
}

#[test]
fn forwarded_addresses_take_the_nearest_hop() {
    let mut headers = HeaderMap::new();
    assert_eq!(forwarded_client_ip(&headers, "x-forwarded-for"), None);
    headers.append(
        "x-forwarded-for",
        HeaderValue::from_static("1.1.1.1, 2.2.2.2"),
    );
    headers.append(
        "x-forwarded-for",
        HeaderValue::from_static("6.6.6.6 , 203.0.113.9"),
    );
    assert_eq!(
        forwarded_client_ip(&headers, "x-forwarded-for"),
        Some("203.0.113.9".parse().unwrap())
    );
    for (value, expected) in [
        ("[2001:db8::1]:443", Some("2001:db8::1")),
        ("2001:db8::1", Some("2001:db8::1")),
        ("10.0.0.1:5000", Some("10.0.0.1")),
        ("unknown", None),
        ("", None),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert("x-real-ip", HeaderValue::from_str(value).unwrap());
        assert_eq!(
            forwarded_client_ip(&headers, "x-real-ip"),
            expected.map(|ip| ip.parse().unwrap()),
            "{value}"
        );
    }
}

#[test]
fn counters_round_trip_and_expire() {
    let limits = limits(&[("FAL_PROXY_RATE_LIMIT", "2/min")]).unwrap();
    let mut counters = Counters::default();
    let hit = limits.hit("u:a", 1, 120);
    assert!(counters.apply(&hit).allowed);
    let mut restored = Counters::from_json(&counters.to_json());
    assert_eq!(restored, counters);
    assert_eq!(restored.apply(&hit).counts, [2]);
    assert!(!restored.apply(&hit).allowed);
    restored.sweep(180);
    assert_eq!(restored, Counters::from_json("{}"));
    assert_eq!(Counters::from_json("not json"), Counters::default());
}

#[test]
fn the_rest_command_and_its_answer() {
    let limits = limits(&[("FAL_PROXY_RATE_LIMIT", "10/min,200/day")]).unwrap();
    let hit = limits.hit("u:a", 3, 86_400 + 90);
    let command: Vec<String> = serde_json::from_str(&command(&hit)).unwrap();
    assert_eq!(command[0], "EVAL");
    assert_eq!(command[1], REDIS_SCRIPT);
    assert_eq!(
        command[2..],
        [
            "2",
            "fal-proxy:rl:{u:a}:60:1441",
            "fal-proxy:rl:{u:a}:86400:1",
            "3",
            "10",
            "30",
            "200",
            "86310"
        ]
    );
    assert_eq!(
        parse_answer(br#"{"result":[1,3,3]}"#, 2),
        Ok(Counted {
            allowed: true,
            counts: vec![3, 3]
        })
    );
    assert_eq!(
        parse_answer(br#"{"result":[0,9,9]}"#, 2),
        Ok(Counted {
            allowed: false,
            counts: vec![9, 9]
        })
    );
    for bad in [
        &br#"{"error":"ERR"}"#[..],
        br#"{"result":[1,3]}"#,
        br#"{"result":[2,3,3]}"#,
        br#"{"result":"OK"}"#,
        b"<html>",
    ] {
        assert_eq!(parse_answer(bad, 2), Err(StoreError::Invalid));
    }
}

#[test]
fn hits_and_answers_travel_as_json() {
    let limits = limits(&[("FAL_PROXY_RATE_LIMIT", "10/min,200/day")]).unwrap();
    let hit = limits.hit("u:abc", 3, 1_800_000_000);
    assert_eq!(hit.identity(), Some("u:abc"));
    assert_eq!(Hit::from_json(&hit.to_json()), Some(hit.clone()));
    assert_eq!(Hit::from_json("{}"), None);
    let mut short = hit.clone();
    short.ttls.pop();
    assert_eq!(Hit::from_json(&short.to_json()), None);
    let counted = Counted {
        allowed: true,
        counts: vec![3, 3],
    };
    assert_eq!(counted.to_json(), r#"{"result":[1,3,3]}"#);
    assert_eq!(
        Counted::from_json(counted.to_json().as_bytes(), 2),
        Ok(counted)
    );
    assert_eq!(
        Counted::from_json(br#"{"result":[1,3]}"#, 2),
        Err(StoreError::Invalid)
    );
}

// ---- limitsreview2: failing reproductions (review findings, not fixes) ----

/// FINDING: a `;` (or other character the proxy's own allow-list treats as
/// ambiguous, see `target::is_plain_app_path`) in the app segment is not
/// treated as ambiguous by `endpoint_for_cost`: `kling-video;x` no longer
/// matches `fal-ai/kling-video/**`, so the request is charged the default 1
/// instead of 50 (or the highest cost). If any router in front of fal drops a
/// `;` path parameter (as `..;/`-style normalisation does), a Kling video costs 1.
#[test]
fn review_a_matrix_parameter_does_not_lower_an_endpoint_cost() {
    let limits = limits(&[
        ("FAL_PROXY_RATE_LIMIT", "100/min"),
        ("FAL_PROXY_ENDPOINT_COSTS", "fal-ai/kling-video/**=50"),
    ])
    .unwrap();
    let mut cheap = Vec::new();
    for path in [
        "/fal-ai/kling-video;x/v2/master/text-to-video",
        "/fal-ai/kling-video;/v2/master/text-to-video",
        "/fal-ai/kling-video@x/v2/master/text-to-video",
        "/fal-ai/kling-video:x/v2/master/text-to-video",
    ] {
        assert!(
            !crate::target::is_plain_app_path(path),
            "the allow-list itself calls {path} ambiguous"
        );
        let charge = limits.charge(&Method::POST, "queue.fal.run", path);
        if charge != Charge::Cost(50) {
            cheap.push(format!("{path} -> {charge:?}"));
        }
    }
    assert!(
        cheap.is_empty(),
        "paths the allow-list calls ambiguous must cost the highest cost (50), \
         not the default: {cheap:?}"
    );
}

/// FINDING: `RedisStore::connection` holds its `tokio::sync::Mutex` across
/// `get_multiplexed_async_connection` (bounded by STORE_TIMEOUT), and the wait
/// for that lock is not bounded at all. With a Redis that accepts TCP but never
/// answers (or a blackholed address), concurrent requests queue on the lock and
/// the k-th waits about k * STORE_TIMEOUT instead of STORE_TIMEOUT.
#[cfg(feature = "redis")]
#[test]
fn review_a_silent_redis_holds_requests_beyond_the_store_timeout() {
    use std::time::Instant;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    // Accept and keep the sockets open, never answering.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let store = RedisStore::new(&format!("redis://127.0.0.1:{port}")).expect("store");
    let limits = limits(&[("FAL_PROXY_RATE_LIMIT", "10/min")]).unwrap();
    let hit = limits.hit("ip:1.2.3.4", 1, 1_000_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let slowest = runtime.block_on(async {
        let timed = || async {
            let start = Instant::now();
            let answer = store.hit(&hit).await;
            assert!(answer.is_err());
            start.elapsed()
        };
        let (a, b, c) = tokio::join!(timed(), timed(), timed());
        eprintln!("elapsed: {a:?} {b:?} {c:?}");
        a.max(b).max(c)
    });
    assert!(
        slowest < STORE_TIMEOUT + std::time::Duration::from_millis(500),
        "a request waited {slowest:?} for a silent Redis; STORE_TIMEOUT is {STORE_TIMEOUT:?}"
    );
}
