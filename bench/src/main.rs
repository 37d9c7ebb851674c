//! `scripts/bench.sh`: the native server's own cost, measured.
//!
//! Starts a mock fal upstream in this process, the release proxy binary in
//! another (and, when given a second argument, the official Node proxy's
//! Express server script under `node`), and drives them with a pooled
//! HTTP/1.1 client on loopback: the same requests sent straight to the mock
//! and through each proxy, so a proxy's cost shows as a ratio. Bounded: a fixed time per level, loopback
//! only. Prints a Markdown table for the README.

#![allow(clippy::expect_used, clippy::panic)] // a measuring tool: fail loudly

mod soak;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
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
use tokio::process::Command;

const RESULT_JSON: &str = r#"{"images":[{"url":"https://v3.fal.media/files/bench/image.png","width":1024,"height":1024,"content_type":"image/png"}],"seed":42,"has_nsfw_concepts":[false],"prompt":"a cat"}"#;
const INPUT_JSON: &str = r#"{"prompt":"a cat","image_size":"square_hd","num_inference_steps":4}"#;
const LEVEL_TIME: Duration = Duration::from_secs(4);
const WARMUP: Duration = Duration::from_millis(500);
const SSE_SAMPLES: usize = 50;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    let soak = args.next_if(|arg| arg == "--soak").is_some();
    let proxy_bin = args
        .next()
        .unwrap_or_else(|| "target/release/fal-proxy-server".to_owned());
    let reference_script = args.next();
    let mock = start_mock().await;
    if soak {
        let contender = Contender::start("fal-proxy", &proxy_bin, &[], mock).await;
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(128)
            .build_http();
        return if soak::run(&client, &contender).await {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        };
    }
    let mut contenders = vec![Contender::start("fal-proxy", &proxy_bin, &[], mock).await];
    if let Some(script) = &reference_script {
        contenders
            .push(Contender::start("official Node proxy", "node", &[script.as_str()], mock).await);
    }

    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(128)
        .build_http();
    let direct = Route::Direct(mock);

    let mut header = String::from("| what | direct to mock |");
    let mut rule = String::from("|---|---|");
    for contender in &contenders {
        header.push_str(&format!(" {0} | {0} / direct |", contender.name));
        rule.push_str("---|---|");
    }
    println!("{header}\n{rule}");
    for concurrency in [1usize, 16, 64] {
        let d = load(&client, &direct, concurrency).await;
        let mut levels = Vec::new();
        for contender in &contenders {
            levels.push(load(&client, &Route::Proxy(contender.addr), concurrency).await);
        }
        let row = |what: &str,
                   direct: f64,
                   value: &dyn Fn(&Level) -> f64,
                   show: &dyn Fn(f64) -> String| {
            let mut line = format!("| c={concurrency}: {what} | {} |", show(direct));
            for level in &levels {
                line.push_str(&format!(
                    " {} | {:.2} |",
                    show(value(level)),
                    value(level) / direct
                ));
            }
            println!("{line}");
        };
        let us = |secs: f64| format!("{:.0} µs", secs * 1e6);
        row("requests/s", d.rps, &|l| l.rps, &|v| format!("{v:.0}"));
        row(
            "p50 latency",
            d.p50.as_secs_f64(),
            &|l| l.p50.as_secs_f64(),
            &us,
        );
        row(
            "p99 latency",
            d.p99.as_secs_f64(),
            &|l| l.p99.as_secs_f64(),
            &us,
        );
    }
    let d = first_event(&client, &direct).await;
    let mut line = format!(
        "| time to first SSE event (median of {SSE_SAMPLES}) | {} |",
        micros(d)
    );
    for contender in &contenders {
        let p = first_event(&client, &Route::Proxy(contender.addr)).await;
        line.push_str(&format!(
            " {} | {:.2} |",
            micros(p),
            p.as_secs_f64() / d.as_secs_f64()
        ));
    }
    println!("{line}");
    let mut line = String::from("| memory: idle RSS / peak RSS | |");
    for contender in &contenders {
        line.push_str(&format!(
            " {} KiB / {} KiB | |",
            contender.idle_rss,
            memory_kib(contender.pid, "VmHWM")
        ));
    }
    println!("{line}");
    for mut contender in contenders {
        let _ = contender.child.kill().await;
    }
    std::process::ExitCode::SUCCESS
}

/// A proxy under measurement, in its own process, pointed at the mock.
struct Contender {
    name: &'static str,
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
    idle_rss: u64,
}

impl Contender {
    /// Starts `program args` and waits for its `listening on http://ADDR` line.
    async fn start(name: &'static str, program: &str, args: &[&str], mock: SocketAddr) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("FAL_KEY", "bench-id:bench-secret")
            .env("FAL_PROXY_UPSTREAM", format!("http://{mock}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {program}: {error}"));
        let pid = child.id().expect("pid");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let addr: SocketAddr = loop {
            let line = lines
                .next_line()
                .await
                .expect("stderr")
                .unwrap_or_else(|| panic!("{name} exited before listening"));
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .expect("address")
                    .parse()
                    .expect("address");
            }
        };
        // Drain (and drop) the per-request log lines so the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let idle_rss = memory_kib(pid, "VmRSS");
        Self {
            name,
            child,
            pid,
            addr,
            idle_rss,
        }
    }
}

#[derive(Clone, Copy)]
enum Route {
    Direct(SocketAddr),
    Proxy(SocketAddr),
}

impl Route {
    fn request(&self, path: &str, accept: &str) -> http::Request<Full<Bytes>> {
        let builder = match self {
            Route::Direct(addr) => http::Request::post(format!("http://{addr}/fal.run{path}")),
            Route::Proxy(addr) => http::Request::post(format!("http://{addr}/api/fal/proxy"))
                .header("x-fal-target-url", format!("https://fal.run{path}")),
        };
        builder
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(Full::new(Bytes::from_static(INPUT_JSON.as_bytes())))
            .expect("request")
    }
}

struct Level {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

async fn load(client: &HttpClient, route: &Route, concurrency: usize) -> Level {
    let started = Instant::now();
    let measure_from = started + WARMUP;
    let deadline = measure_from + LEVEL_TIME;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let route = *route;
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let sent = Instant::now();
                if sent >= deadline {
                    break samples;
                }
                let response = client
                    .request(route.request("/fal-ai/bench", "application/json"))
                    .await
                    .expect("response");
                assert_eq!(response.status(), 200);
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .expect("body")
                    .to_bytes();
                assert_eq!(body.len(), RESULT_JSON.len());
                if sent >= measure_from {
                    samples.push(sent.elapsed());
                }
            }
        }));
    }
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.expect("worker"));
    }
    all.sort();
    let percentile = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Level {
        rps: all.len() as f64 / LEVEL_TIME.as_secs_f64(),
        p50: percentile(0.50),
        p99: percentile(0.99),
    }
}

async fn first_event(client: &HttpClient, route: &Route) -> Duration {
    let mut samples = Vec::new();
    for _ in 0..SSE_SAMPLES {
        let sent = Instant::now();
        let response = client
            .request(route.request("/fal-ai/bench/stream", "text/event-stream"))
            .await
            .expect("response");
        let mut body = response.into_body();
        loop {
            let frame = body.frame().await.expect("first event").expect("frame");
            if frame
                .data_ref()
                .is_some_and(|data| data.starts_with(b"data:"))
            {
                samples.push(sent.elapsed());
                break;
            }
        }
        // Drain the rest, so the connection goes back to the pool.
        while body.frame().await.is_some() {}
    }
    samples.sort();
    samples[samples.len() / 2]
}

/// A mock fal: JSON results at once; streams with a first event at once and
/// the last one 20 ms later.
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
                let service = service_fn(mock_fal);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

type MockBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn mock_fal(
    request: http::Request<Incoming>,
) -> Result<http::Response<MockBody>, Infallible> {
    let stream = request.uri().path().ends_with("/stream");
    let _ = request.into_body().collect().await;
    if !stream {
        let response = http::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(RESULT_JSON.as_bytes())).boxed())
            .expect("response");
        return Ok(response);
    }
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let _ = sender
            .send(Bytes::from_static(b"data: {\"n\":0}\n\n"))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = sender
            .send(Bytes::from_static(b"data: {\"n\":1}\n\n"))
            .await;
    });
    let response = http::Response::builder()
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(ChannelBody(receiver)))
        .expect("response");
    Ok(response)
}

/// A body fed by a channel: each message one frame, as the mock sends it.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|data| data.map(|data| Ok(Frame::data(data))))
    }
}

fn memory_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

fn micros(duration: Duration) -> String {
    format!("{} µs", duration.as_micros())
}
