//! attack2: what a connection's read buffer keeps (adaptive read sizes).
//! Measurements, printed; asserts only the bounds claimed in the report.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use http_body_util::{BodyExt, Empty};
use tokio::io::AsyncWriteExt;

/// The size of the allocation behind an empty `read` that nothing else
/// holds: the most `try_reclaim` can give without allocating.
fn allocation(read: &mut BytesMut) -> usize {
    let (mut low, mut high) = (0usize, 64 << 20);
    while low < high {
        let mid = (low + high).div_ceil(2);
        if read.try_reclaim(mid) {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    low
}

async fn exchange(conn: &mut Conn<tokio::io::DuplexStream>) -> Head {
    let body: PoolBody = Empty::new().map_err(|never| match never {}).boxed();
    let mut upload = Some(Upload::new(
        &Method::GET,
        &"http://h/".parse().unwrap(),
        &HeaderMap::new(),
        body,
        "h",
    ));
    let mut failed = None;
    std::future::poll_fn(|cx| poll_exchange(conn, &mut upload, &mut failed, cx))
        .await
        .unwrap()
}

/// Reads a body to its end; `hold` keeps every piece (a browser slower than
/// fal, its pieces queued); returns the pieces' count.
async fn read_body(
    conn: &mut Conn<tokio::io::DuplexStream>,
    framing: Framing,
    held: &mut Vec<Bytes>,
    hold: bool,
) -> usize {
    let mut decoder = Decoder::new(framing);
    let mut pieces = 0;
    while let Some(piece) = std::future::poll_fn(|cx| poll_body(conn, &mut decoder, cx)).await {
        pieces += 1;
        if hold {
            held.push(piece.unwrap());
        }
    }
    pieces
}

#[tokio::test]
async fn what_an_idle_connection_keeps_after_a_long_download() {
    const BODY: usize = 32 << 20;
    let (client, server) = tokio::io::duplex(1 << 20);
    let writer = tokio::spawn(async move {
        let mut conn_side = server;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BODY}\r\n\r\n");
        conn_side.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..BODY / chunk.len() {
            conn_side.write_all(&chunk).await.unwrap();
        }
        // Then a small answer trickled a byte at a time, after the burst.
        let small = "HTTP/1.1 200 OK\r\ncontent-length: 64\r\n\r\n".to_owned() + &"y".repeat(64);
        for byte in small.as_bytes() {
            conn_side.write_all(&[*byte]).await.unwrap();
            tokio::task::yield_now().await;
        }
        conn_side
    });
    let mut conn = Conn::new(client);
    let head = exchange(&mut conn).await;
    let mut held = Vec::new();
    let pieces = read_body(&mut conn, head.framing, &mut held, false).await;
    drop(head);
    let after_download = (conn.read_size, conn.read.len(), allocation(&mut conn.read));
    eprintln!(
        "after a {BODY}-byte download in {pieces} pieces: read_size {}, buffered {}, allocation {}",
        after_download.0, after_download.1, after_download.2
    );
    // The trickled answer: read sizes come down.
    let head = exchange(&mut conn).await;
    let pieces = read_body(&mut conn, head.framing, &mut held, false).await;
    drop(head);
    let after_trickle = (conn.read_size, conn.read.len(), allocation(&mut conn.read));
    eprintln!(
        "after a trickled answer ({pieces} pieces): read_size {}, buffered {}, allocation {}",
        after_trickle.0, after_trickle.1, after_trickle.2
    );
    let _server = writer.await.unwrap();
    assert!(after_download.2 <= 2 * (MAX_READ_SIZE + MAX_HEAD_BYTES));
}

/// A browser slower than fal: the pieces stay queued. How much memory they
/// pin in all, against the bytes they carry.
#[tokio::test]
async fn what_held_pieces_pin() {
    const BODY: usize = 8 << 20;
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let writer = tokio::spawn(async move {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BODY}\r\n\r\n");
        server.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..BODY / chunk.len() {
            server.write_all(&chunk).await.unwrap();
        }
        server
    });
    let mut conn = Conn::new(client);
    let head = exchange(&mut conn).await;
    let mut held = Vec::new();
    let pieces = read_body(&mut conn, head.framing, &mut held, true).await;
    let bytes: usize = held.iter().map(Bytes::len).sum();
    let sizes: Vec<usize> = held.iter().map(Bytes::len).collect();
    eprintln!(
        "{pieces} pieces, {bytes} bytes; first sizes {:?}; read_size {}",
        &sizes[..sizes.len().min(12)],
        conn.read_size
    );
    let _server = writer.await.unwrap();
}
