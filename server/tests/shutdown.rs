//! SIGTERM against the real binary: it stops accepting, closes idle
//! keep-alive connections at once, lets a stream in flight run to its end,
//! then exits cleanly.

#![allow(clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// An upstream that answers one request with a server-sent event stream:
/// the first event at once, the second and the end when `go` fires.
async fn streaming_upstream(go: oneshot::Receiver<()>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        support::read_head(&mut stream).await.expect("a request");
        let first = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n";
        stream.write_all(first.as_bytes()).await.expect("write");
        go.await.expect("go");
        stream
            .write_all(b"9\r\ndata: 2\n\n\r\n0\r\n\r\n")
            .await
            .expect("write");
        // Held open until the proxy lets go of it.
        let _ = stream.read(&mut [0u8; 1]).await;
    });
    port
}

/// Reads from `stream` until `seen` (all read so far) contains `wanted`.
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, wanted: &str) {
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !String::from_utf8_lossy(seen).contains(wanted) {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "closed before {wanted:?}: {}",
                String::from_utf8_lossy(seen)
            );
            seen.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {wanted:?} in {}", String::from_utf8_lossy(seen)));
}

#[tokio::test]
async fn sigterm_drains_a_stream_and_closes_idle_connections() {
    let (go, went) = oneshot::channel();
    let upstream = format!("http://127.0.0.1:{}", streaming_upstream(went).await);
    let (mut child, port) = support::start(&[
        ("FAL_KEY", "test-id:test-secret-value"),
        ("FAL_PROXY_UPSTREAM", upstream.as_str()),
    ])
    .await;

    // A keep-alive connection that had one answer and now idles.
    let mut idle = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let request = format!("GET /nothing-here HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n");
    idle.write_all(request.as_bytes()).await.expect("write");
    support::read_answer(&mut idle).await;

    // A stream in flight: its first event has arrived.
    let mut streaming = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let request = format!(
        "POST /api/fal/proxy HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nx-fal-target-url: https://fal.run/fal-ai/x/stream\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    streaming
        .write_all(request.as_bytes())
        .await
        .expect("write");
    let mut seen = Vec::new();
    read_until(&mut streaming, &mut seen, "data: 1").await;

    let pid = child.id().expect("pid");
    let status = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());

    // The idle connection is closed at once.
    let mut sink = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut sink))
        .await
        .expect("the idle connection is closed within 3 s");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

    // No new connections (the listener is gone).
    let refused = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "still accepting 3 s after SIGTERM");

    // The stream in flight still runs to its end, then the server exits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().expect("wait").is_none(),
        "exited with a stream in flight"
    );
    go.send(()).expect("go");
    read_until(&mut streaming, &mut seen, "data: 2").await;
    read_until(&mut streaming, &mut seen, "\r\n0\r\n\r\n").await;
    let exit = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exits within 5 s of the stream's end")
        .expect("exit status");
    assert!(exit.success(), "{exit:?}");
}
