//! The server binary against a keep-alive upstream, for what the pool's
//! own tests cannot show end to end.

#![allow(clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;

const KEY: &str = "test-id:test-secret-value";
struct Server {
    _child: Child,
    port: u16,
}

async fn start(env: &[(&str, &str)]) -> Server {
    let (child, port) = support::start(env).await;
    Server {
        _child: child,
        port,
    }
}

/// A keep-alive upstream that answers `200 ok` to every complete request
/// (no body, or a chunked body to its last chunk) and records the bytes of
/// every connection.
async fn keep_alive_upstream() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let origin = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let index = {
                let mut all = record.lock().expect("lock");
                all.push(Vec::new());
                all.len() - 1
            };
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    let Ok(n @ 1..) = stream.read(&mut buffer).await else {
                        return;
                    };
                    record.lock().expect("lock")[index].extend_from_slice(&buffer[..n]);
                    pending.extend_from_slice(&buffer[..n]);
                    let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
                    let complete = if head.contains("transfer-encoding: chunked") {
                        pending.ends_with(b"0\r\n\r\n") && pending.len() > end + 4
                    } else {
                        true
                    };
                    if complete {
                        pending.clear();
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (origin, seen)
}

async fn exchange(port: u16, bytes: &[u8]) -> String {
    let mut browser = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    browser.write_all(bytes).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), browser.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn request(extra: &str) -> String {
    format!(
        "POST /api/fal/proxy HTTP/1.1\r\nhost: localhost\r\nx-fal-target-url: https://fal.run/fal-ai/x\r\nconnection: close\r\n{extra}\r\n"
    )
}

/// faults.rs `a_malformed_browser_body_is_a_400_not_a_502`, with a pooled
/// connection to fal already open (as in any running proxy): the malformed
/// chunked body must still be a 400, and fal must never receive a complete
/// request made of what came before the bad chunk.
#[tokio::test]
async fn a_malformed_browser_body_on_a_warm_pool_is_a_400_and_never_reaches_fal_complete() {
    let (fal, seen) = keep_alive_upstream().await;
    let server = start(&[("FAL_KEY", KEY), ("FAL_PROXY_UPSTREAM", &fal)]).await;
    let mut outcomes = Vec::new();
    for round in 0..20 {
        // Warm: one idle connection to fal.
        let warm = exchange(server.port, request("content-length: 0\r\n").as_bytes()).await;
        assert!(warm.starts_with("HTTP/1.1 200"), "{warm}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut bad = request("transfer-encoding: chunked\r\n");
        // Odd rounds: a good chunk first; even rounds: the bad chunk first.
        if round % 2 == 1 {
            bad.push_str(&format!("5\r\nhel{round:02}\r\nzz\r\nnot a chunk\r\n"));
        } else {
            bad.push_str("zz\r\nnot a chunk\r\n");
        }
        let answer = exchange(server.port, bad.as_bytes()).await;
        outcomes.push(answer.lines().next().unwrap_or("").to_owned());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let all = seen.lock().expect("lock").clone();
    eprintln!(
        "connections {}: {:?}",
        all.len(),
        all.iter()
            .map(|b| String::from_utf8_lossy(b).matches("POST").count())
            .collect::<Vec<_>>()
    );
    let complete: Vec<String> = all
        .iter()
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
        .filter(|text| text.contains("transfer-encoding: chunked") && text.contains("0\r\n\r\n"))
        .collect();
    assert!(
        complete.is_empty() && outcomes.iter().all(|line| line.starts_with("HTTP/1.1 400")),
        "answers {outcomes:?}; fal got complete truncated uploads: {complete:?}"
    );
}
