//! Shared by the server's newer integration tests: the release binary
//! started on a free loopback port, and what they read off it.

// Each test crate uses its own part of this module.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The port in the server's `listening on http://HOST:PORT` line, once
/// `text` (its stderr so far) has it.
pub fn listening_port(text: &str) -> Option<u16> {
    let rest = text.split("listening on http://").nth(1)?;
    let authority = rest.split([' ', '/']).next()?;
    authority.rsplit(':').next()?.parse().ok()
}

/// Reads a head (a request's or an answer's) off `stream` a byte at a
/// time, so nothing after it is taken; `None` when the stream ends (or
/// fails) before it does.
pub async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Reads one answer (its head, and a `content-length` body) off `stream`;
/// returns the head, lower-cased.
pub async fn read_answer(stream: &mut TcpStream) -> String {
    let head = read_head(stream)
        .await
        .expect("closed early")
        .to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |value| value.trim().parse().expect("length"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.expect("body");
    head
}

/// Starts the server with only `env` (and `HOST`, `PORT`) set; returns it
/// (killed when dropped) and the port it listens on. Its stderr is read
/// out in the background.
pub async fn start(env: &[(&str, &str)]) -> (Child, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fal-proxy-server"))
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("server starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let port = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.expect("stderr line") {
            if let Some(port) = listening_port(&line) {
                return port;
            }
        }
        panic!("server exited before listening");
    })
    .await
    .expect("listens");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}
