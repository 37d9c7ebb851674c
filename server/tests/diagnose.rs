//! What the server binary tells a developer, read from its real stderr:
//! the start-up summary, the CORS hints, the refused origin, the cause of an
//! unreachable upstream, the JSON log format, and egress through a proxy
//! from the environment (a CONNECT proxy written here, on 127.0.0.1).

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test helpers fail loudly by design

mod support;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

const KEY: &str = "test-id:test-secret-value";

/// The server binary, started with `env`, its port and everything it wrote
/// to stderr so far.
struct Server {
    _child: Child,
    port: u16,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    async fn start(env: &[(&str, &str)]) -> Server {
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
        let stderr = Arc::new(Mutex::new(String::new()));
        let port = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.expect("stderr line") {
                stderr.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(rest) = line.split("listening on http://127.0.0.1:").nth(1) {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    return digits.parse::<u16>().expect("port");
                }
            }
            panic!("server exited before listening: {}", stderr.lock().unwrap());
        })
        .await
        .expect("server listens within 20 s");
        let sink = Arc::clone(&stderr);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Server {
            _child: child,
            port,
            stderr,
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) for a log line containing `needle`.
    async fn line_with(&self, needle: &str) -> String {
        for _ in 0..200 {
            if let Some(line) = self.log().lines().find(|line| line.contains(needle)) {
                return line.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no log line with {needle:?}:\n{}", self.log());
    }

    /// Sends one raw HTTP/1.1 request and returns the whole answer.
    async fn raw(&self, head: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect");
        let request = format!(
            "{head}host: 127.0.0.1:{}\r\nconnection: close\r\n\r\n",
            self.port
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
            .await
            .expect("answer within 30 s")
            .expect("read");
        String::from_utf8_lossy(&answer).into_owned()
    }

    async fn preflight(&self, origin: &str) -> String {
        self.raw(&format!(
            "OPTIONS /api/fal/proxy HTTP/1.1\r\norigin: {origin}\r\naccess-control-request-method: POST\r\naccess-control-request-headers: content-type, x-fal-target-url\r\n"
        ))
        .await
    }

    /// A POST to `target` with the query and a user key the log must not show.
    async fn post(&self, target: &str) -> String {
        self.raw(&format!(
            "POST /api/fal/proxy HTTP/1.1\r\nx-fal-target-url: {target}\r\nx-fal-user-key: user:user-secret-value\r\ncontent-length: 0\r\n"
        ))
        .await
    }
}

fn status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {answer}"))
}

/// A 127.0.0.1 port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn cors_off_preflight_hints_once_per_origin() {
    let server = Server::start(&[("FAL_KEY", KEY)]).await;
    let summary = server.line_with("browsers:").await;
    assert!(summary.contains("CORS is off"), "{summary}");
    assert!(
        summary.contains(&format!("http://127.0.0.1:{}", server.port)),
        "{summary}"
    );

    for _ in 0..3 {
        assert_eq!(
            status(&server.preflight("http://localhost:5173").await),
            204
        );
    }
    assert_eq!(
        status(&server.preflight("http://127.0.0.1:5173").await),
        204
    );
    server.line_with("origin=http://127.0.0.1:5173").await;
    let log = server.log();
    let hints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("hint=cors_off"))
        .collect();
    assert_eq!(hints.len(), 2, "one per origin:\n{log}");
    assert!(
        hints[0].starts_with("fal-proxy: warning:")
            && hints[0].contains("FAL_PROXY_ALLOWED_ORIGINS=http://localhost:5173"),
        "{log}"
    );
    assert!(
        hints[1].contains("FAL_PROXY_ALLOWED_ORIGINS=http://127.0.0.1:5173"),
        "{log}"
    );
    // Every preflight still has its request line, naming the origin.
    let preflights = log
        .lines()
        .filter(|l| l.contains("method=OPTIONS target=- status=204"))
        .count();
    assert_eq!(preflights, 4, "{log}");
}

#[tokio::test]
async fn refused_origin_is_named_and_sanitised() {
    let server = Server::start(&[
        ("FAL_KEY", KEY),
        ("FAL_PROXY_ALLOWED_ORIGINS", "http://localhost:5173"),
    ])
    .await;
    let summary = server.line_with("browsers:").await;
    assert!(
        summary.contains("CORS is on for http://localhost:5173"),
        "{summary}"
    );

    let answer = server.preflight("http://127.0.0.1:5173").await;
    assert_eq!(status(&answer), 403);
    assert!(answer.contains("origin_not_allowed"), "{answer}");
    let line = server.line_with("error=origin_not_allowed").await;
    assert!(
        line.ends_with("error=origin_not_allowed origin=http://127.0.0.1:5173"),
        "{line}"
    );
    let hint = server.line_with("hint=origin_not_allowed").await;
    assert!(
        hint.contains("localhost and 127.0.0.1 are different origins"),
        "{hint}"
    );

    // An Origin crafted to forge fields or a line stays inside its field.
    let answer = server
        .preflight("http://evil.example status=200 fal-proxy:\tmethod=GET")
        .await;
    assert_eq!(status(&answer), 403);
    let line = server.line_with("origin=http://evil.example").await;
    assert!(
        line.ends_with("origin=http://evil.example\\x20status=200\\x20fal-proxy:\\x09method=GET"),
        "{line}"
    );
    assert_eq!(
        server.log().matches(" status=200").count(),
        0,
        "{}",
        server.log()
    );
}

/// An upstream that reads a request head, then resets the connection.
async fn resetting_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer).await;
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    });
    port
}

/// A port whose accept queue is full, so a connection attempt hangs until
/// the proxy's connect timeout (the kernel drops further SYNs). Holds the
/// listener and the connection filling it.
async fn hanging_port() -> (u16, tokio::net::TcpListener, Vec<TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let listener = socket.listen(0).expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    (port, listener, fillers)
}

#[tokio::test]
async fn unreachable_upstream_names_its_cause() {
    let tls = tls::Upstream::start().await;
    let reset_port = resetting_upstream().await;
    let closed = closed_port().await;
    let (hanging, _listener, _fillers) = hanging_port().await;
    // A label over 63 bytes cannot be looked up: the resolver fails it
    // without sending a query anywhere.
    let unresolvable = format!("http://{}.invalid", "a".repeat(64));
    tokio::join!(
        expect_cause(unresolvable, "dns"),
        expect_cause(format!("http://127.0.0.1:{closed}"), "connect"),
        // A certificate from a CA this process does not trust.
        expect_cause(format!("https://127.0.0.1:{}", tls.port), "tls"),
        expect_cause(format!("http://127.0.0.1:{reset_port}"), "reset"),
        // Waits out the ten-second connect timeout, alongside the others.
        expect_cause(format!("http://127.0.0.1:{hanging}"), "timeout"),
    );
}

/// A server whose upstream is `upstream` answers 502 and logs `cause`, and
/// neither the key nor the query.
async fn expect_cause(upstream: String, cause: &str) {
    let server = Server::start(&[
        ("FAL_KEY", KEY),
        ("FAL_PROXY_KEY_MODE", "user-or-server"),
        ("FAL_PROXY_UPSTREAM", &upstream),
    ])
    .await;
    let answer = server
        .post("https://fal.run/fal-ai/x?prompt=private-query")
        .await;
    assert_eq!(status(&answer), 502, "{cause}: {answer}");
    assert!(
        answer.contains("\"error_type\":\"upstream_unreachable\""),
        "{answer}"
    );
    assert!(
        !answer.contains("cause"),
        "the cause stays in the log: {answer}"
    );
    let line = server.line_with("error=upstream_unreachable").await;
    assert!(
        line.ends_with(&format!("error=upstream_unreachable cause={cause}")),
        "{cause}: {line}"
    );
    let log = server.log();
    assert!(
        !log.contains("secret-value") && !log.contains("private-query"),
        "{log}"
    );
}

#[tokio::test]
async fn json_log_format_writes_one_object_per_line() {
    let closed = closed_port().await;
    let server = Server::start(&[
        ("FAL_KEY", KEY),
        ("FAL_PROXY_LOG_FORMAT", "json"),
        ("FAL_PROXY_UPSTREAM", &format!("http://127.0.0.1:{closed}")),
    ])
    .await;
    assert_eq!(
        status(&server.preflight("http://localhost:5173").await),
        204
    );
    assert_eq!(
        status(&server.post("https://fal.run/fal-ai/x?q=1").await),
        502
    );
    server.line_with("\"status\":502").await;

    let lines: Vec<serde_json::Value> = server
        .log()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert!(lines.iter().all(|l| l["level"].is_string()), "{lines:?}");
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("listening on http://127.0.0.1:"))),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l["level"] == "warn"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("FAL_PROXY_UPSTREAM"))),
        "{lines:?}"
    );
    let hint = lines
        .iter()
        .find(|l| l["hint"] == "cors_off")
        .expect("a hint line");
    assert_eq!(hint["level"], "warn");
    assert_eq!(hint["origin"], "http://localhost:5173");
    let preflight = lines
        .iter()
        .find(|l| l["method"] == "OPTIONS")
        .expect("the preflight's line");
    assert_eq!(preflight["status"], 204);
    assert_eq!(preflight["target"], "-");
    let failed = lines
        .iter()
        .find(|l| l["method"] == "POST")
        .expect("the request's line");
    assert_eq!(failed["level"], "info");
    assert_eq!(failed["target"], "fal.run/fal-ai/x");
    assert_eq!(failed["status"], 502);
    assert!(failed["duration_ms"].is_u64() && failed["bytes"].is_u64());
    assert_eq!(failed["error"], "upstream_unreachable");
    assert_eq!(failed["cause"], "connect");

    // A bad setting is reported in the same format, naming the variable.
    let output = Command::new(env!("CARGO_BIN_EXE_fal-proxy-server"))
        .env_clear()
        .env("PORT", "0")
        .env("FAL_PROXY_LOG_FORMAT", "json")
        .env("FAL_PROXY_TIMEOUT_SECS", "forever")
        .output()
        .await
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error: serde_json::Value = serde_json::from_str(stderr.trim()).expect("one JSON line");
    assert_eq!(error["level"], "error");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("FAL_PROXY_TIMEOUT_SECS")),
        "{stderr}"
    );
}

/// A CONNECT proxy on 127.0.0.1: records each request line and tunnels
/// every CONNECT to `tunnel_to`, whatever host it names (nothing leaves
/// the machine).
async fn connect_proxy(tunnel_to: u16) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let Some(head) = support::read_head(&mut client).await else {
                    return;
                };
                let line = head.lines().next().unwrap_or_default().to_owned();
                record.lock().unwrap().push(line.clone());
                if !line.starts_with("CONNECT ") {
                    let _ = client
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", tunnel_to)).await else {
                    return;
                };
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_ok()
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn env_proxy_is_used_only_when_asked() {
    let tls = tls::Upstream::start().await;
    let (proxy_port, connects) = connect_proxy(tls.port).await;
    let proxy_url = format!("http://127.0.0.1:{proxy_port}");
    let ca = tls.ca_file.to_str().expect("path");

    // On, and no test seam: the request for fal.run goes through the proxy
    // as a CONNECT tunnel, and fal's TLS is verified end to end inside it.
    let server = Server::start(&[
        ("FAL_KEY", KEY),
        ("FAL_PROXY_USE_ENV_PROXY", "1"),
        ("HTTPS_PROXY", &proxy_url),
        ("SSL_CERT_FILE", ca),
    ])
    .await;
    let summary = server.line_with("egress:").await;
    assert!(
        summary.contains(&format!("egress: via {proxy_url} (HTTPS_PROXY)")),
        "{summary}"
    );
    let answer = server.post("https://fal.run/fal-ai/flux/dev?x=1").await;
    assert_eq!(status(&answer), 200, "{answer}\n{}", server.log());
    assert!(answer.ends_with("{\"via\":\"tls\"}"), "{answer}");
    assert_eq!(*connects.lock().unwrap(), ["CONNECT fal.run:443 HTTP/1.1"]);
    let heads = tls.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    let head = heads[0].to_ascii_lowercase();
    assert!(
        head.starts_with("post /fal-ai/flux/dev?x=1 http/1.1"),
        "{head}"
    );
    assert!(head.contains("host: fal.run"), "{head}");
    assert!(
        head.contains(&format!("authorization: key {}", KEY.to_ascii_lowercase())),
        "{head}"
    );
    drop(server);

    let seam = format!("https://127.0.0.1:{}", tls.port);
    let direct = |env: Vec<(&'static str, String)>| {
        let seam = seam.clone();
        let ca = ca.to_owned();
        async move {
            let mut pairs: Vec<(&str, String)> = vec![
                ("FAL_KEY", KEY.to_owned()),
                ("FAL_PROXY_UPSTREAM", seam),
                ("SSL_CERT_FILE", ca),
            ];
            pairs.extend(env);
            let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let server = Server::start(&borrowed).await;
            let answer = server.post("https://fal.run/fal-ai/x").await;
            assert_eq!(status(&answer), 200, "{answer}\n{}", server.log());
        }
    };
    // Off (the default): HTTPS_PROXY in the environment is not used.
    let before = tls.heads.lock().unwrap().len();
    direct(vec![("HTTPS_PROXY", proxy_url.clone())]).await;
    // On, but NO_PROXY names the host: direct too.
    direct(vec![
        ("FAL_PROXY_USE_ENV_PROXY", "1".to_owned()),
        ("HTTPS_PROXY", proxy_url.clone()),
        ("NO_PROXY", "localhost,127.0.0.1".to_owned()),
    ])
    .await;
    assert_eq!(connects.lock().unwrap().len(), 1, "no new CONNECT");
    assert_eq!(tls.heads.lock().unwrap().len(), before + 2);
    // On, without NO_PROXY: the same request goes through the proxy.
    direct(vec![
        ("FAL_PROXY_USE_ENV_PROXY", "1".to_owned()),
        ("https_proxy", proxy_url.clone()),
    ])
    .await;
    assert_eq!(
        connects.lock().unwrap().last().map(String::as_str),
        Some(format!("CONNECT 127.0.0.1:{} HTTP/1.1", tls.port).as_str())
    );

    // A proxy URL that is not one stops the server, naming the variable
    // and never the password in it.
    let output = Command::new(env!("CARGO_BIN_EXE_fal-proxy-server"))
        .env_clear()
        .env("PORT", "0")
        .env("FAL_PROXY_USE_ENV_PROXY", "1")
        .env("HTTPS_PROXY", "ftp://me:hunter2@proxy.example:21")
        .output()
        .await
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("HTTPS_PROXY") && !stderr.contains("hunter2"),
        "{stderr}"
    );
}

/// A TLS upstream on 127.0.0.1 with a certificate for `fal.run` and
/// `127.0.0.1`, issued by a CA made for the test (trusted only by a server
/// started with `SSL_CERT_FILE` pointing at it).
mod tls {
    use super::*;
    use std::path::PathBuf;

    pub struct Upstream {
        pub port: u16,
        pub ca_file: PathBuf,
        pub heads: Arc<Mutex<Vec<String>>>,
    }

    impl Upstream {
        pub async fn start() -> Upstream {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let ca_key = rcgen::KeyPair::generate().expect("key");
            let mut ca_params =
                rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca_params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "fal-proxy test CA");
            ca_params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
            let issuer = rcgen::Issuer::new(ca_params, ca_key);
            let leaf_key = rcgen::KeyPair::generate().expect("key");
            let mut leaf_params =
                rcgen::CertificateParams::new(vec!["fal.run".to_owned(), "127.0.0.1".to_owned()])
                    .expect("params");
            leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");

            let dir = std::env::temp_dir().join(format!(
                "fal-proxy-diagnose-{}-{}",
                std::process::id(),
                rand_suffix()
            ));
            std::fs::create_dir_all(&dir).expect("dir");
            let ca_file = dir.join("ca.pem");
            std::fs::write(&ca_file, ca_cert.pem()).expect("write CA");

            let config = rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(
                    vec![leaf.der().clone()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
                )
                .expect("server config");
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let heads = Arc::new(Mutex::new(Vec::new()));
            let record = Arc::clone(&heads);
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let record = Arc::clone(&record);
                    tokio::spawn(async move {
                        let Ok(mut stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let mut head = Vec::new();
                        let mut byte = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") {
                            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                                return;
                            }
                            head.push(byte[0]);
                        }
                        record
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&head).into_owned());
                        let body = "{\"via\":\"tls\"}";
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(answer.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
            });
            Upstream {
                port,
                ca_file,
                heads,
            }
        }
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    }
}
