//! A request's line is on stderr before its answer ends, also when stderr
//! cannot take it for a while: stderr here is a pipe made unable to take
//! the line (filled up to 16 bytes short of its 64 KiB), so the answer must
//! not end until the pipe is read again.
//!
//! - HTTP/1.1, a streamed body of unknown length: chunked, its end is the
//!   `0\r\n\r\n` terminator, a write, which waits for the line.
//! - HTTP/1.0, the same body: close-delimited, its end is the connection's
//!   close (`shutdown`), which waits for the line too (`Watched`).
//!
//! Each with the line written at once (one request at a time: that `write`
//! holds the server until the pipe takes it) and queued (`log_lines`): two
//! pipelined requests answered in one pass first turn queuing on, and it
//! stays on until a batch is written, so the streamed request's line is
//! queued and the writer's `write` is what waits.

#![allow(clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "test-id:test-secret-value";
const PAGE: usize = 4096;
/// A pipe's default capacity on Linux: 16 pages.
const PIPE_PAGES: usize = 16;

/// An upstream that answers a chunked stream: `hello` at once, its end
/// after `end_after`.
async fn streaming_upstream(end_after: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if support::read_head(&mut stream).await.is_none() {
                    return;
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
                    .await;
                tokio::time::sleep(end_after).await;
                let _ = stream.write_all(b"0\r\n\r\n").await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    port
}

/// Reads the pipe only when asked: each needle sent is read up to, and
/// everything read so far is sent back.
fn reader(mut pipe: std::io::PipeReader) -> (mpsc::Sender<String>, mpsc::Receiver<String>) {
    let (ask, asked) = mpsc::channel::<String>();
    let (tell, told) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buffer = vec![0u8; 1 << 16];
        for needle in asked {
            while !String::from_utf8_lossy(&seen).contains(&needle) {
                match pipe.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buffer[..n]),
                }
            }
            if tell
                .send(String::from_utf8_lossy(&seen).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    (ask, told)
}

/// Sends `request` while stderr cannot take a line; returns whether the
/// answer ended (`end` seen, or the connection closed) before the pipe was
/// read again, the answer, and stderr.
async fn answer_end_while_stderr_is_full(
    request_line: &str,
    queued: bool,
) -> (bool, String, String) {
    let upstream = streaming_upstream(Duration::from_millis(300)).await;
    let (read_end, write_end) = std::io::pipe().expect("pipe");
    let mut filler = write_end.try_clone().expect("clone");
    let _child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fal-proxy-server"))
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("FAL_KEY", KEY)
        .env("FAL_PROXY_UPSTREAM", format!("http://127.0.0.1:{upstream}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(write_end))
        .kill_on_drop(true)
        .spawn()
        .expect("server starts");
    let (ask, told) = reader(read_end);
    ask.send("listening on http://".into()).expect("reader");
    let text = told
        .recv_timeout(Duration::from_secs(20))
        .expect("server starts");
    let rest = text
        .split("listening on http://")
        .nth(1)
        .expect("listening");
    let authority = rest.split([' ', '/']).next().expect("authority");
    let port: u16 = authority
        .rsplit(':')
        .next()
        .expect("port")
        .parse()
        .expect("port");
    if queued {
        // Two requests answered in one pass: the second line turns queuing on
        // (both are written at once), and nothing turns it off again until a
        // queued batch is written.
        let mut warm = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let refused = |n: u32| {
            format!(
                "POST /api/fal/proxy HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nx-fal-target-url: https://elsewhere.example/warm{n}\r\ncontent-length: 2\r\n\r\n{{}}"
            )
        };
        warm.write_all(format!("{}{}", refused(1), refused(2)).as_bytes())
            .await
            .expect("write");
        let mut got = Vec::new();
        let mut buffer = [0u8; 4096];
        while String::from_utf8_lossy(&got)
            .matches("HTTP/1.1 403")
            .count()
            < 2
            || !got.ends_with(b"}")
        {
            let n = tokio::time::timeout(Duration::from_secs(10), warm.read(&mut buffer))
                .await
                .expect("the warm-up answers")
                .expect("read");
            assert!(n > 0, "closed");
            got.extend_from_slice(&buffer[..n]);
        }
    }
    // The start-up lines are written before the server accepts: let them
    // all out, then read up to a mark of ours, which empties the pipe.
    tokio::time::sleep(Duration::from_millis(500)).await;
    filler.write_all(b"MARK\n").expect("mark");
    ask.send("MARK\n".into()).expect("reader");
    told.recv_timeout(Duration::from_secs(5))
        .expect("mark read");
    // 15 full pages and 16 bytes short of the 16th: a write of more than
    // 16 bytes (any request line) now waits until the pipe is read.
    let fill = std::thread::spawn(move || {
        filler
            .write_all(&vec![b'.'; (PIPE_PAGES - 1) * PAGE])
            .expect("fill");
        filler.write_all(&vec![b'.'; PAGE - 16]).expect("fill");
        filler
    });
    let started = std::time::Instant::now();
    while !fill.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the pipe is not 64 KiB here"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _filler = fill.join().expect("filled");

    let mut browser = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let request = format!(
        "POST /api/fal/proxy {request_line}\r\nhost: localhost\r\nx-fal-target-url: https://fal.run/fal-ai/x/stream\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    browser.write_all(request.as_bytes()).await.expect("write");
    // The head and `hello` arrive: nothing blocks on stderr before the end.
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("hello") {
        let n = tokio::time::timeout(Duration::from_secs(10), browser.read(&mut buffer))
            .await
            .expect("the answer starts while stderr is full")
            .expect("read");
        assert!(
            n > 0,
            "closed before the first chunk: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..n]);
    }
    // The upstream ends its stream 300 ms in: the request's line is due and
    // stderr cannot take it. Does the answer end anyway?
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match browser.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    seen.extend_from_slice(&buffer[..n]);
                    if seen.ends_with(b"0\r\n\r\n") {
                        return;
                    }
                }
            }
        }
    })
    .await
    .is_ok();
    // Read stderr again: the line is written, and the answer ends.
    ask.send("target=fal.run/fal-ai/x/stream".into())
        .expect("reader");
    let log = told
        .recv_timeout(Duration::from_secs(10))
        .expect("the line is written");
    (ended, String::from_utf8_lossy(&seen).into_owned(), log)
}

fn request_line_of(log: &str) -> String {
    log.lines()
        .find(|line| line.contains("target=fal.run/fal-ai/x/stream"))
        .map(|line| line.trim_start_matches('.').to_owned())
        .unwrap_or_default()
}

/// The streamed answer over `request_line`, its line written at once or
/// queued: it must not have ended while stderr could not take the line.
async fn check(request_line: &str, queued: bool) {
    let (ended, answer, log) = answer_end_while_stderr_is_full(request_line, queued).await;
    if request_line == "HTTP/1.0" {
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("transfer-encoding"),
            "{answer}"
        );
    } else {
        assert!(answer.contains("transfer-encoding: chunked"), "{answer}");
    }
    let line = request_line_of(&log);
    assert!(line.contains("status=200"), "{line}");
    assert!(
        !ended,
        "the {request_line} answer ended while its line could not be written to stderr (queued: {queued}):\n{answer}\nline (written later): {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_does_not_end_before_its_line() {
    check("HTTP/1.1", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_answer_does_not_end_before_its_line() {
    check("HTTP/1.0", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_does_not_end_before_its_queued_line() {
    check("HTTP/1.1", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_answer_does_not_end_before_its_queued_line() {
    check("HTTP/1.0", true).await;
}
