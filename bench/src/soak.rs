//! `scripts/bench.sh --soak`: 100,000 requests at concurrency 64 through the
//! release server, a mix of plain, streaming and refused requests, checking
//! every answer and the server's memory. Not part of CI: it takes about a
//! minute on two cores. Loopback only, bounded in count.

use crate::{Contender, HttpClient, INPUT_JSON, RESULT_JSON, Route, memory_kib};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const REQUESTS: usize = 100_000;
/// Enough for resident memory to settle: with 5,000 it still grew by a
/// megabyte over the next 20,000 requests, then stayed flat.
const WARMUP_REQUESTS: usize = 20_000;
const CONCURRENCY: usize = 64;
/// The largest growth of resident memory from after warm-up to the end.
const MAX_RSS_GROWTH: f64 = 0.10;

/// One request of the mix, by its index: 7 in 10 plain, 2 streaming, 1 refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    Stream,
    Refused,
}

impl Kind {
    fn of(index: usize) -> Self {
        match index % 10 {
            0..=6 => Self::Plain,
            7 | 8 => Self::Stream,
            _ => Self::Refused,
        }
    }
}

#[derive(Default)]
struct Tally {
    plain: AtomicUsize,
    stream: AtomicUsize,
    refused: AtomicUsize,
    unexpected: AtomicUsize,
}

/// Runs the soak against `contender`; returns whether it held.
pub async fn run(client: &HttpClient, contender: &Contender) -> bool {
    let route = Route::Proxy(contender.addr);
    let warmup = Arc::new(Tally::default());
    drive(client, route, WARMUP_REQUESTS, &warmup).await;
    let rss_warm = memory_kib(contender.pid, "VmRSS");
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    // In five slices, to show the trend of resident memory, not just its ends.
    let mut trend = Vec::new();
    for _ in 0..5 {
        drive(client, route, REQUESTS / 5, &tally).await;
        trend.push(memory_kib(contender.pid, "VmRSS").to_string());
    }
    let elapsed = started.elapsed();
    // Let the last log lines and connections settle before reading memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_end = memory_kib(contender.pid, "VmRSS");
    let peak = memory_kib(contender.pid, "VmHWM");
    let growth = (rss_end as f64 - rss_warm as f64) / rss_warm.max(1) as f64;
    let unexpected =
        tally.unexpected.load(Ordering::Relaxed) + warmup.unexpected.load(Ordering::Relaxed);
    println!("| soak | value |\n|---|---|");
    println!(
        "| requests (after {WARMUP_REQUESTS} warm-up) | {REQUESTS} at concurrency {CONCURRENCY} |"
    );
    println!(
        "| mix: plain / streaming / refused | {} / {} / {} |",
        tally.plain.load(Ordering::Relaxed),
        tally.stream.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed)
    );
    println!("| unexpected answers or errors | {unexpected} |");
    println!(
        "| duration, requests/s | {:.1} s, {:.0} |",
        elapsed.as_secs_f64(),
        REQUESTS as f64 / elapsed.as_secs_f64()
    );
    println!(
        "| RSS after warm-up / at the end / peak | {rss_warm} KiB / {rss_end} KiB / {peak} KiB ({:+.1}%) |",
        growth * 100.0
    );
    println!("| RSS after each 20,000 | {} KiB |", trend.join(" / "));
    let held = unexpected == 0 && growth.abs() <= MAX_RSS_GROWTH;
    println!("| result | {} |", if held { "held" } else { "FAILED" });
    held
}

async fn drive(client: &HttpClient, route: Route, count: usize, tally: &Arc<Tally>) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let client = client.clone();
        let next = Arc::clone(&next);
        let tally = Arc::clone(tally);
        workers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break;
                }
                let kind = Kind::of(index);
                match one(&client, route, kind).await {
                    Ok(()) => {
                        let counter = match kind {
                            Kind::Plain => &tally.plain,
                            Kind::Stream => &tally.stream,
                            Kind::Refused => &tally.refused,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(problem) => {
                        if tally.unexpected.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("soak: request {index} ({kind:?}): {problem}");
                        }
                    }
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
}

/// Sends one request of `kind` and checks its whole answer.
async fn one(client: &HttpClient, route: Route, kind: Kind) -> Result<(), String> {
    let request = match kind {
        Kind::Plain => route.request(
            "/fal-ai/bench",
            "application/json",
            Bytes::from_static(INPUT_JSON.as_bytes()),
        ),
        Kind::Stream => route.request(
            "/fal-ai/bench/stream",
            "text/event-stream",
            Bytes::from_static(INPUT_JSON.as_bytes()),
        ),
        Kind::Refused => {
            let Route::Proxy(addr) = route else {
                return Err("refused requests need the proxy".to_owned());
            };
            http::Request::post(format!("http://{addr}/api/fal/proxy"))
                .header("x-fal-target-url", "https://evil.example/steal")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(b"{}")))
                .map_err(|error| error.to_string())?
        }
    };
    let response = client
        .request(request)
        .await
        .map_err(|error| format!("request failed: {error}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| format!("body failed: {error}"))?
        .to_bytes();
    let fine = match kind {
        Kind::Plain => status == 200 && body == RESULT_JSON.as_bytes(),
        Kind::Stream => {
            status == 200 && body.as_ref() == b"data: {\"n\":0}\n\ndata: {\"n\":1}\n\n".as_slice()
        }
        Kind::Refused => {
            status == 403
                && String::from_utf8_lossy(&body).contains("\"error_type\":\"target_not_allowed\"")
        }
    };
    if fine {
        Ok(())
    } else {
        Err(format!(
            "status {status}, body {:?}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    }
}
