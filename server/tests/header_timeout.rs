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

/// Answers `POST /fal.run/fal-ai/x/SIZE` with SIZE bytes (content-length),
/// any number of requests a connection.
async fn sized_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                while let Some(head) = support::read_head(&mut stream).await {
                    let size: usize = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|path| path.rsplit('/').next())
                        .and_then(|size| size.parse().ok())
                        .expect("a size");
                    let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
                    let mut answer = answer.into_bytes();
                    answer.resize(answer.len() + size, b'x');
                    if stream.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// A reader that pauses for 34 s right after its request (a backgrounded
/// tab, a stalled mobile link) still gets all of its answer: the part
/// still waiting in the server's write buffer when the body ended is not
/// taken for an idle connection (a review found the registry's sweep
/// cutting it off 30 s after the body's end). Sizes around what loopback's
/// kernel buffers hold with a 4 KiB receive buffer, so that some bodies end
/// at once with their last bytes in the server's buffer. Runs beside the
/// test above.
#[tokio::test]
async fn a_paused_reader_gets_all_of_its_answer() {
    let upstream = sized_upstream().await;
    let (_child, port) = support::start(&[
        ("FAL_KEY", "test-id:test-secret-value"),
        ("FAL_PROXY_UPSTREAM", upstream.as_str()),
    ])
    .await;
    let mut readers = Vec::new();
    for size in (0..9).map(|n| 2_800_000 + n * 100_000) {
        readers.push(tokio::spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_recv_buffer_size(4096).expect("receive buffer");
            let mut stream = socket
                .connect(([127, 0, 0, 1], port).into())
                .await
                .expect("connect");
            let request = format!(
                "POST /api/fal/proxy HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nx-fal-target-url: https://fal.run/fal-ai/x/{size}\r\ncontent-length: 0\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.expect("write");
            tokio::time::sleep(Duration::from_secs(35)).await;
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            let read_all = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    let body = got
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|at| got.len() - at - 4);
                    if body.is_some_and(|body| body >= size) {
                        return true;
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                    }
                }
            })
            .await;
            (size, read_all == Ok(true), got.len())
        }));
    }
    for reader in readers {
        let (size, whole, got) = reader.await.expect("task");
        assert!(
            whole,
            "the answer of {size} bytes was cut off at {got} bytes (head included)"
        );
    }
}
