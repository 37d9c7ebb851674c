//! The real server binary against a hand-rolled upstream on 127.0.0.1:
//! what the Node suite cannot see from the browser's side (the upstream
//! connection being dropped, chunked bodies, the process's own output).

#![allow(clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

const KEY: &str = "test-id:test-secret-value";

/// The server binary, started with `env`, and the port it bound.
struct Server {
    child: Child,
    port: u16,
    stderr: Arc<tokio::sync::Mutex<String>>,
}

impl Server {
    async fn start(env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fal-proxy-server"));
        command
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("server starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let stderr = Arc::new(tokio::sync::Mutex::new(String::new()));
        let port = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.expect("stderr line") {
                stderr.lock().await.push_str(&format!("{line}\n"));
                if let Some(rest) = line.split("listening on http://127.0.0.1:").nth(1) {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    return digits.parse::<u16>().expect("port");
                }
            }
            panic!("server exited before listening: {}", stderr.lock().await);
        })
        .await
        .expect("server listens within 20 s");
        let sink = Arc::clone(&stderr);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().await.push_str(&format!("{line}\n"));
            }
        });
        Server {
            child,
            port,
            stderr,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/fal/proxy", self.port)
    }

    async fn log(&self) -> String {
        self.stderr.lock().await.clone()
    }
}

/// A raw HTTP/1.1 upstream: reads a request head, lets `respond` write.
async fn upstream<F, Fut>(respond: F) -> (u16, Arc<AtomicUsize>)
where
    F: Fn(String, TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let respond = Arc::clone(&respond);
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                respond(head, stream).await;
            });
        }
    });
    (port, hits)
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn client() -> reqwest::Client {
    client_builder().build().expect("client")
}

fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy()
}

#[tokio::test]
async fn caller_going_away_drops_the_upstream_request() {
    let dropped = Arc::new(Notify::new());
    let signal = Arc::clone(&dropped);
    let (port, _) = upstream(move |_, mut stream| {
        let signal = Arc::clone(&signal);
        async move {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            // An endless event stream; a failed write means the proxy hung up.
            for n in 0..600 {
                let event = format!("data: {{\"n\":{n}}}\n\n");
                let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                if stream.write_all(chunk.as_bytes()).await.is_err() {
                    signal.notify_one();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await;
    let server = Server::start(&[
        ("FAL_KEY", KEY),
        ("FAL_PROXY_UPSTREAM", &format!("http://127.0.0.1:{port}")),
    ])
    .await;

    let mut browser = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect");
    let request = "POST /api/fal/proxy HTTP/1.1\r\nhost: localhost\r\nx-fal-target-url: https://fal.run/fal-ai/x/stream\r\naccept: text/event-stream\r\ncontent-length: 2\r\n\r\n{}";
    browser.write_all(request.as_bytes()).await.expect("write");
    let mut seen = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let n = tokio::time::timeout(Duration::from_secs(10), browser.read(&mut buffer))
            .await
            .expect("first event within 10 s")
            .expect("read");
        assert!(n > 0, "closed before the first event");
        seen.extend_from_slice(&buffer[..n]);
    }
    drop(browser);
    tokio::time::timeout(Duration::from_secs(10), dropped.notified())
        .await
        .expect("the upstream request is dropped within 10 s of the browser leaving");
}

#[tokio::test]
async fn slow_upstream_is_504_and_unreachable_is_502() {
    let (port, hits) = upstream(|_, mut stream| async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            .await;
    })
    .await;
    let server = Server::start(&[
        ("FAL_KEY", KEY),
        ("FAL_PROXY_TIMEOUT_SECS", "1"),
        ("FAL_PROXY_UPSTREAM", &format!("http://127.0.0.1:{port}")),
    ])
    .await;
    let response = client()
        .post(server.url())
        .header("x-fal-target-url", "https://fal.run/fal-ai/slow")
        .body("{}")
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 504);
    let body: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
    assert_eq!(body["error_type"], "upstream_timeout");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let server = Server::start(&[
        ("FAL_KEY", KEY),
        (
            "FAL_PROXY_UPSTREAM",
            &format!("http://127.0.0.1:{closed_port}"),
        ),
    ])
    .await;
    let response = client()
        .get(server.url())
        .header("x-fal-target-url", "https://fal.run/fal-ai/x")
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 502);
    let body: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
    assert_eq!(body["error_type"], "upstream_unreachable");
    assert!(server.log().await.contains("error=upstream_unreachable"));
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    let (port, _) = upstream(|_, mut stream| async move {
        // Drain whatever arrives, answer only if the body ends.
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buffer).await {
            if n == 0 {
                return;
            }
        }
    })
    .await;
    let server = Server::start(&[
        ("FAL_KEY", KEY),
        ("FAL_PROXY_MAX_BODY_BYTES", "1000"),
        ("FAL_PROXY_UPSTREAM", &format!("http://127.0.0.1:{port}")),
    ])
    .await;
    let mut browser = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect");
    let mut request = String::from(
        "POST /api/fal/proxy HTTP/1.1\r\nhost: localhost\r\nx-fal-target-url: https://fal.run/fal-ai/x\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    for _ in 0..5 {
        request.push_str(&format!("3e8\r\n{}\r\n", "a".repeat(1000)));
    }
    request.push_str("0\r\n\r\n");
    browser.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&response).contains("}") {
        let n = tokio::time::timeout(Duration::from_secs(10), browser.read(&mut buffer))
            .await
            .expect("answer within 10 s")
            .expect("read");
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buffer[..n]);
    }
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.contains("\"error_type\":\"body_too_large\""),
        "{response}"
    );
}

#[tokio::test]
async fn redirects_off_the_allow_list_are_refused_not_followed() {
    let (port, hits) = upstream(|_, mut stream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 302 Found\r\nlocation: https://evil.example/steal\r\ncontent-length: 0\r\n\r\n")
            .await;
    })
    .await;
    let server = Server::start(&[
        ("FAL_KEY", KEY),
        ("FAL_PROXY_UPSTREAM", &format!("http://127.0.0.1:{port}")),
    ])
    .await;
    let response = client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(server.url())
        .header("x-fal-target-url", "https://fal.run/fal-ai/x")
        .send()
        .await
        .expect("response");
    // The browser's fetch would follow a redirect with the same headers (a
    // visitor's key included): one that leaves the allow-list never reaches it.
    assert_eq!(response.status(), 502);
    assert!(response.headers().get("location").is_none());
    let body: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
    assert_eq!(body["error_type"], "upstream_redirect");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.log().await.contains("error=upstream_redirect"));
}

#[tokio::test]
async fn what_the_key_looks_like_upstream_and_in_the_log() {
    let (port, _) = upstream(|head, mut stream| async move {
        let body = serde_json::json!({ "head": head }).to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
    })
    .await;
    let mut server = Server::start(&[
        ("FAL_KEY", KEY),
        ("FAL_PROXY_UPSTREAM", &format!("http://127.0.0.1:{port}")),
    ])
    .await;
    let response = client()
        .post(server.url())
        .header("x-fal-target-url", "https://queue.fal.run/fal-ai/x?y=1")
        .header("cookie", "session=browser")
        .header("authorization", "Bearer browser")
        .body("{}")
        .send()
        .await
        .expect("response");
    let body: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
    let head = body["head"].as_str().expect("head").to_ascii_lowercase();
    assert!(
        head.starts_with("post /queue.fal.run/fal-ai/x?y=1 http/1.1"),
        "{head}"
    );
    assert!(
        head.contains(&format!("authorization: key {}", KEY.to_ascii_lowercase())),
        "{head}"
    );
    assert!(
        !head.contains("cookie") && !head.contains("bearer"),
        "{head}"
    );
    assert!(head.contains("x-fal-client-proxy: fal-proxy/"), "{head}");

    // SIGTERM: a clean exit, and nothing it printed holds the key.
    let pid = server.child.id().expect("pid");
    let status = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), server.child.wait())
        .await
        .expect("exits within 15 s")
        .expect("exit status");
    assert!(exit.success(), "{exit:?}");
    let log = server.log().await;
    assert!(
        log.contains("method=POST target=queue.fal.run/fal-ai/x status=200"),
        "{log}"
    );
    assert!(!log.contains("secret-value"), "{log}");
}

#[tokio::test]
async fn configuration_at_start() {
    let run = |env: Vec<(&'static str, &'static str)>| async move {
        let output = Command::new(env!("CARGO_BIN_EXE_fal-proxy-server"))
            .env_clear()
            .env("PORT", "0")
            .envs(env)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(Duration::from_secs(20), output)
            .await
            .expect("exits")
            .expect("output")
    };
    let bad = run(vec![
        ("FAL_KEY", "id:secret-value"),
        ("FAL_PROXY_KEY_MODE", "bogus"),
    ])
    .await;
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("FAL_PROXY_KEY_MODE"), "{stderr}");
    assert!(!stderr.contains("secret-value"), "{stderr}");

    let bad_key = run(vec![("FAL_KEY", "id:secret value")]).await;
    assert!(!bad_key.status.success());
    let stderr = String::from_utf8_lossy(&bad_key.stderr);
    assert!(
        stderr.contains("FAL_KEY") && !stderr.contains("secret value"),
        "{stderr}"
    );

    let bad_port = run(vec![("PORT", "http")]).await;
    assert!(String::from_utf8_lossy(&bad_port.stderr).contains("PORT"));

    let server = Server::start(&[]).await;
    assert!(
        server.log().await.contains("key mode: user"),
        "{}",
        server.log().await
    );
}

#[tokio::test]
async fn loopback_server_refuses_rebound_host_names() {
    let (port, hits) = upstream(|_, mut stream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            .await;
    })
    .await;
    let upstream_origin = format!("http://127.0.0.1:{port}");
    let server = Server::start(&[("FAL_KEY", KEY), ("FAL_PROXY_UPSTREAM", &upstream_origin)]).await;
    let send = |host: String| {
        let url = server.url();
        async move {
            let mut browser = TcpStream::connect(
                url.trim_start_matches("http://")
                    .split('/')
                    .next()
                    .expect("authority"),
            )
            .await
            .expect("connect");
            let request = format!(
                "GET /api/fal/proxy HTTP/1.1\r\nhost: {host}\r\nx-fal-target-url: https://fal.run/fal-ai/x\r\nconnection: close\r\n\r\n"
            );
            browser.write_all(request.as_bytes()).await.expect("write");
            let mut response = String::new();
            browser.read_to_string(&mut response).await.expect("read");
            response
        }
    };
    let rebound = send(format!("rebind.attacker.example:{}", server.port)).await;
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    assert!(rebound.contains("host_not_allowed"), "{rebound}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    for host in [
        format!("localhost:{}", server.port),
        format!("127.0.0.1:{}", server.port),
    ] {
        let answer = send(host).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // Told otherwise, it answers to the names it is given.
    let named = Server::start(&[
        ("FAL_KEY", KEY),
        ("FAL_PROXY_UPSTREAM", &upstream_origin),
        ("FAL_PROXY_ALLOWED_HOSTS", "proxy.example"),
    ])
    .await;
    assert!(named.log().await.contains("hosts: proxy.example"));
}
