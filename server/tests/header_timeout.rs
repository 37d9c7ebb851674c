//! The 30 s header-read timeout against the real binary (kept by the
//! connection registry's sweep, `server/src/connections.rs`; until the
//! seventh performance round, hyper's timer on recycled tokio timers): a
//! connection idle between keep-alive requests, one trickling its head
//! from the start, and one trickling a head that starts 15 s later (when
//! the warm-up's connections have ended requests since).

#![allow(clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;

async fn start() -> (Child, u16) {
    support::start(&[("FAL_KEY", "test-id:test-secret-value")]).await
}

/// One keep-alive request; reads its answer (content-length framed).
async fn request(stream: &mut TcpStream, port: u16) {
    let text = format!("GET /nothing-here HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n");
    stream.write_all(text.as_bytes()).await.expect("write");
    support::read_answer(stream).await;
}

/// Waits (at most `limit`) until the server closes `stream`; when it did.
async fn closed_at(mut stream: TcpStream, limit: Duration) -> Option<Instant> {
    let mut sink = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// Trickles a head that never ends, a byte every 500 ms, until the server
/// closes the connection (or `limit`); when it did.
async fn trickle_until_closed(stream: TcpStream, limit: Duration) -> Option<Instant> {
    let (mut read, mut write) = stream.into_split();
    let bytes = b"GET /x HTTP/1.1\r\nx-a: "
        .iter()
        .copied()
        .chain(std::iter::repeat(b'a'));
    let writer = tokio::spawn(async move {
        for byte in bytes {
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut sink = [0u8; 1024];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match read.read(&mut sink).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok();
    writer.abort();
    closed
}

#[tokio::test]
async fn the_header_read_timeout_holds_on_recycled_timers() {
    let (_child, port) = start().await;
    // Warm-up: timers dropped after each head read go to the spare lists.
    let mut warm = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        for _ in 0..5 {
            request(&mut stream, port).await;
        }
        warm.push(stream);
    }
    let t0 = Instant::now();
    let idle = warm.pop().expect("one");
    let idle = tokio::spawn(closed_at(idle, Duration::from_secs(60)));
    let early = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let early = tokio::spawn(trickle_until_closed(early, Duration::from_secs(60)));
    tokio::time::sleep(Duration::from_secs(15)).await;
    // More warm-up churn just before, so spares are fresh on every worker.
    for stream in &mut warm {
        request(stream, port).await;
    }
    let t15 = Instant::now();
    let late = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let late = tokio::spawn(trickle_until_closed(late, Duration::from_secs(60)));
    let idle = idle
        .await
        .expect("task")
        .expect("the idle connection was never closed");
    let early = early
        .await
        .expect("task")
        .expect("the trickling connection was never closed");
    let late = late
        .await
        .expect("task")
        .expect("the late trickling connection was never closed");
    let (idle, early, late) = (idle - t0, early - t0, late - t15);
    eprintln!(
        "closed after: idle {idle:?}, early trickle {early:?}, late trickle {late:?} (from its start)"
    );
    for (what, after) in [("idle", idle), ("early", early), ("late", late)] {
        assert!(
            (Duration::from_secs(29)..Duration::from_secs(33)).contains(&after),
            "{what}: closed after {after:?}"
        );
    }
}
