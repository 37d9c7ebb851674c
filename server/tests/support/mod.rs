//! Shared by the server's newer integration tests: the release binary
//! started on a free loopback port.

use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

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
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let authority = rest.split([' ', '/']).next().expect("authority");
                return authority
                    .rsplit(':')
                    .next()
                    .expect("port")
                    .parse::<u16>()
                    .expect("port");
            }
        }
        panic!("server exited before listening");
    })
    .await
    .expect("listens");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}
