//! Review branch h1-attack: the exact bytes fal receives for representative
//! browser requests, printed (normalised) to compare implementations.

#![allow(clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

const KEY: &str = "test-id:test-secret-value";
const BIN: &str = env!("CARGO_BIN_EXE_fal-proxy-server");

#[tokio::test]
async fn attack_print_the_bytes_fal_receives() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let fal = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut buffer = [0u8; 65536];
                loop {
                    // Each request arrives whole within 300 ms here; answer then.
                    let Ok(Ok(n @ 1..)) =
                        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await
                    else {
                        return;
                    };
                    record.lock().expect("lock").extend_from_slice(&buffer[..n]);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    // Drain what else came.
                    while let Ok(Ok(n @ 1..)) = tokio::time::timeout(
                        Duration::from_millis(50),
                        stream.read(&mut buffer),
                    )
                    .await
                    {
                        record.lock().expect("lock").extend_from_slice(&buffer[..n]);
                    }
                    record.lock().expect("lock").extend_from_slice(b"\n=====\n");
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut child = Command::new(BIN)
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("FAL_KEY", KEY)
        .env("FAL_PROXY_UPSTREAM", &fal)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let port: u16 = loop {
        let line = lines.next_line().await.expect("line").expect("line");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split([' ', '/']).next().unwrap().rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let target = "x-fal-target-url: https://fal.run/fal-ai/flux/dev?x=1&y=%20z\r\n";
    let common = "host: localhost\r\nconnection: close\r\nuser-agent: UA/1\r\naccept: application/json\r\norigin: http://localhost\r\ncookie: secret=1\r\nx-fal-queue-priority: low\r\n";
    let requests = [
        format!("POST /api/fal/proxy HTTP/1.1\r\n{common}{target}content-type: application/json\r\ncontent-length: 13\r\n\r\n{{\"prompt\":1}}"),
        format!("POST /api/fal/proxy HTTP/1.1\r\n{common}{target}content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{{\"a\":\r\n2\r\n1}}\r\n0\r\n\r\n"),
        format!("GET /api/fal/proxy HTTP/1.1\r\n{common}{target}\r\n"),
        format!("POST /api/fal/proxy HTTP/1.1\r\n{common}{target}content-length: 0\r\n\r\n"),
        format!("PUT /api/fal/proxy HTTP/1.1\r\n{common}{target}content-type: application/octet-stream\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\nabc"),
        format!("HEAD /api/fal/proxy HTTP/1.1\r\n{common}{target}\r\n"),
        format!("DELETE /api/fal/proxy HTTP/1.1\r\n{common}{target}\r\n"),
        format!("POST /api/fal/proxy HTTP/1.1\r\n{common}x-fal-target-url: https://queue.fal.run/fal-ai/x/requests/abc/status\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"),
    ];
    for request in requests {
        let mut browser = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        browser.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), browser.read_to_end(&mut answer)).await;
        let first = String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_owned();
        seen.lock().expect("lock").extend_from_slice(format!("[browser got: {first}]\n").as_bytes());
    }
    let all = String::from_utf8_lossy(&seen.lock().expect("lock")).into_owned();
    let authority = fal.trim_start_matches("http://");
    let all = all.replace(authority, "FAL");
    std::fs::write(std::env::var("H1_BYTES_OUT").unwrap_or("/tmp/h1-bytes.txt".into()), &all).expect("write");
}
