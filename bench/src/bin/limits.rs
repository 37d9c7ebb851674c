//! What a counted request costs: the native server's latency per request
//! (concurrency 1) with no limit, with `FAL_PROXY_RATE_LIMIT` on the
//! `memory` store and on a `redis-server` on loopback; and one store hit
//! alone, timed in process, for `memory` and for Redis.
//!
//! `target/release/fal-proxy-bench-limits target/release/fal-proxy-server`
//! (needs `redis-server` on PATH). Loopback only, bounded in count.

#![allow(
    clippy::expect_used,
    reason = "a bench: a failure is a crash with its reason"
)]

use bytes::Bytes;
use fal_proxy_core::{CounterStore, Hit, MemoryStore, RedisStore};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

const WARMUP: usize = 300;
const REQUESTS: usize = 3000;
const HITS: usize = 10_000;

#[tokio::main]
async fn main() {
    let server = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/fal-proxy-server".to_owned());
    let mock = start_mock().await;
    let redis_port = free_port().await;
    let mut redis = Command::new("redis-server")
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server on PATH");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let redis_url = format!("redis://127.0.0.1:{redis_port}");

    println!("one store hit, in process ({HITS} sequential hits, one window):");
    let memory = MemoryStore::new();
    report("memory", &time_hits(&memory).await);
    let store = RedisStore::new(&redis_url).expect("redis URL");
    report("redis (loopback)", &time_hits(&store).await);

    println!(
        "\nthrough the native server, concurrency 1 ({REQUESTS} POSTs to fal.run after {WARMUP} warm-up):"
    );
    let limit = [("FAL_PROXY_RATE_LIMIT", "100000000/h,100000000/day")];
    let configs: [(&str, Vec<(&str, &str)>); 3] = [
        ("no limit", vec![]),
        ("memory", limit.to_vec()),
        (
            "redis (loopback)",
            vec![limit[0], ("FAL_PROXY_RATE_STORE", redis_url.as_str())],
        ),
    ];
    let mut base_p50 = None;
    for (name, env) in configs {
        let (mut child, addr) = start_server(&server, mock, &env).await;
        let times = time_requests(addr).await;
        let p50 = percentile(&times, 50);
        let added = base_p50.map_or(String::new(), |base: Duration| {
            format!(
                ", adds {:+.3} ms at p50",
                (p50.as_secs_f64() - base.as_secs_f64()) * 1000.0
            )
        });
        base_p50.get_or_insert(p50);
        println!(
            "  {name:<18} p50 {:.3} ms, p99 {:.3} ms{added}",
            ms(p50),
            ms(percentile(&times, 99))
        );
        let _ = child.kill().await;
    }
    let _ = redis.kill().await;
}

async fn time_hits<S: CounterStore>(store: &S) -> Vec<Duration> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let hit = Hit {
        keys: vec![format!("fal-proxy:rl:{{bench}}:3600:{}", now / 3600)],
        limits: vec![u64::MAX / 2],
        ttls: vec![3600],
        cost: 1,
        now,
    };
    let mut times = Vec::with_capacity(HITS);
    for _ in 0..HITS {
        let started = Instant::now();
        let counted = store.hit(&hit).await.expect("the store answers");
        assert!(counted.allowed);
        times.push(started.elapsed());
    }
    times
}

fn report(name: &str, times: &[Duration]) {
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "  {name:<18} p50 {:.1} µs, p99 {:.1} µs",
        micros(percentile(times, 50)),
        micros(percentile(times, 99))
    );
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn percentile(times: &[Duration], p: usize) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

async fn time_requests(addr: SocketAddr) -> Vec<Duration> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut times = Vec::with_capacity(REQUESTS);
    for i in 0..WARMUP + REQUESTS {
        let request = http::Request::post(format!("http://{addr}/api/fal/proxy"))
            .header("x-fal-target-url", "https://fal.run/fal-ai/flux/dev")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{\"prompt\":\"a cat\"}")))
            .expect("request");
        let started = Instant::now();
        let response = client.request(request).await.expect("response");
        assert_eq!(response.status(), 200);
        let _ = response.into_body().collect().await;
        if i >= WARMUP {
            times.push(started.elapsed());
        }
    }
    times
}

async fn start_server(
    program: &str,
    mock: SocketAddr,
    env: &[(&str, &str)],
) -> (Child, SocketAddr) {
    let mut child = Command::new(program)
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("FAL_KEY", "bench-id:bench-secret")
        .env("FAL_PROXY_UPSTREAM", format!("http://{mock}"))
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the server starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = loop {
        let line = lines.next_line().await.expect("stderr").expect("listening");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .expect("address")
                .parse()
                .expect("address");
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

async fn start_mock() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|request: http::Request<Incoming>| async move {
                    let _ = request.into_body().collect().await;
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                        b"{\"images\":[]}",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
