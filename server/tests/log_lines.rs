//! The per-request log lines, written in batches under load
//! (`log_lines`): each request's line is on stderr before its answer
//! reaches the client, every line is written once and whole. The
//! connections send at the same moment, three requests at a time
//! (pipelined), so that many answers are made in one pass of the server's
//! scheduler and their lines are queued.

#![allow(clippy::expect_used, clippy::panic)]

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const CONNECTIONS: usize = 8;
const ROUNDS: usize = 10;
const PIPELINED: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_line_is_written_before_its_answer_arrives_and_only_once() {
    let dir = std::env::temp_dir().join(format!("fal-proxy-log-lines-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("stderr.log");
    let file = std::fs::File::create(&log).expect("log file");
    let _child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fal-proxy-server"))
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("FAL_KEY", "test-id:test-secret-value")
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .expect("server starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let port: u16 = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(port) = support::listening_port(&text) {
            break port;
        }
        assert!(Instant::now() < deadline, "server did not start: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CONNECTIONS));
    let mut clients = Vec::new();
    for connection in 0..CONNECTIONS {
        let log = log.clone();
        let barrier = std::sync::Arc::clone(&barrier);
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
            for round in 0..ROUNDS {
                // Refused (not on the allow-list): nothing goes upstream,
                // and the line names the path.
                let paths: Vec<String> = (0..PIPELINED)
                    .map(|n| format!("/c{connection}-r{}-end", round * PIPELINED + n))
                    .collect();
                let text: String = paths
                    .iter()
                    .map(|path| format!(
                        "POST /api/fal/proxy HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nx-fal-target-url: https://elsewhere.example{path}\r\ncontent-length: 2\r\n\r\n{{}}"
                    ))
                    .collect();
                // Bounded: a client that failed must not leave the others
                // waiting here for ever.
                tokio::time::timeout(Duration::from_secs(20), barrier.wait())
                    .await
                    .expect("the other connections reach the round");
                stream.write_all(text.as_bytes()).await.expect("write");
                for path in &paths {
                    let head = support::read_answer(&mut stream).await;
                    assert!(head.starts_with("http/1.1 403"), "{head}");
                    // The answer is here: its line must already be in the log.
                    let written = std::fs::read_to_string(&log).expect("log");
                    assert!(
                        written.contains(&format!("target=elsewhere.example{path} ")),
                        "no line for {path} when its answer arrived:\n{written}"
                    );
                }
            }
        }));
    }
    for client in clients {
        client.await.expect("client");
    }
    let written = std::fs::read_to_string(&log).expect("log");
    for connection in 0..CONNECTIONS {
        for request in 0..ROUNDS * PIPELINED {
            let needle = format!("target=elsewhere.example/c{connection}-r{request}-end ");
            assert_eq!(written.matches(&needle).count(), 1, "{needle}:\n{written}");
        }
    }
    let request_lines: Vec<&str> = written
        .lines()
        .filter(|line| line.contains("target=elsewhere.example"))
        .collect();
    assert_eq!(request_lines.len(), CONNECTIONS * ROUNDS * PIPELINED);
    for line in request_lines {
        assert!(
            line.starts_with("fal-proxy: method=POST target=elsewhere.example/c")
                && line.contains(" status=403 ")
                && line.ends_with("error=target_not_allowed"),
            "{line}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
