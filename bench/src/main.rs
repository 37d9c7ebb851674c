//! `scripts/bench.sh`: the native server's own cost, measured side by side
//! with nginx doing the same minimal job and with the official Node proxy.
//!
//! Starts a mock fal upstream in this process, then each proxy in its own
//! process pointed at it: fal-proxy (the release binary), nginx (Debian's,
//! configured here: see [`NGINX_CONF`]) and, when given a script, the
//! official Node proxy under `node`. Load comes from `wrk` (a 1 KB JSON POST
//! to `fal.run/fal-ai/flux/dev`, keep-alive, loopback, at 1 and 32
//! connections); CPU time is each proxy's user + system time from
//! `/proc/<pid>/stat` (nginx: master and workers) over the measured runs
//! divided by the requests they served: per level, four rounds of 3 s, the
//! contenders taking turns, each run after a 1 s warm-up that is not counted.
//! Bounded: a fixed time per level, loopback only.
//! Prints a Markdown table for the README.

#![allow(clippy::expect_used, clippy::panic)] // a measuring tool: fail loudly

mod soak;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

const RESULT_JSON: &str = r#"{"images":[{"url":"https://v3.fal.media/files/bench/image.png","width":1024,"height":1024,"content_type":"image/png"}],"seed":42,"has_nsfw_concepts":[false],"prompt":"a cat"}"#;
/// The soak's JSON input.
const INPUT_JSON: &str = r#"{"prompt":"a cat","image_size":"square_hd","num_inference_steps":4}"#;
const LOAD_PATH: &str = "/fal-ai/flux/dev";
/// Each contender's measured time per level: [`ROUNDS`] runs of
/// [`LEVEL_TIME`], each after a [`WARMUP`] that is not counted.
const ROUNDS: usize = 4;
const LEVEL_TIME: Duration = Duration::from_secs(3);
const WARMUP: Duration = Duration::from_secs(1);
const LEVELS: [usize; 2] = [1, 32];
const SSE_SAMPLES: usize = 50;
const UPLOAD_BYTES: usize = 20 * 1024 * 1024;
const DOWNLOAD_BYTES: usize = 10 * 1024 * 1024;
const TRANSFERS: usize = 5;
const IDLE_CONNECTIONS: usize = 10_000;
const SERVED_FOR_MEMORY: u64 = 100_000;
const FAL_KEY: &str = "bench-id:bench-secret";

/// nginx doing the minimal job: two workers, a keep-alive upstream pool, a
/// `map` that accepts only `https://(fal.run|queue.fal.run)/...` targets and
/// rewrites them to the upstream's path, `Authorization` set, `Cookie` and
/// `x-fal-target-url` cleared, no buffering either way, one access-log line
/// per request (to stderr, as fal-proxy's). `keepalive_requests` is raised
/// so nginx does not close a busy keep-alive connection every 1000 requests
/// (fal-proxy never does). `{listen}`, `{mock}`, `{key}` are filled in.
const NGINX_CONF: &str = r#"daemon off;
worker_processes 2;
worker_rlimit_nofile 20000;
pid nginx.pid;
error_log stderr warn;
events { worker_connections 16384; }
http {
  log_format fal '$request_method $fal_target status=$status duration=$request_time bytes=$bytes_sent';
  access_log /dev/stderr fal;
  map $http_x_fal_target_url $fal_path {
    default "";
    "~^https://(?<fal_host>fal\.run|queue\.fal\.run)(?<fal_rest>/.*)$" /$fal_host$fal_rest;
  }
  map $http_x_fal_target_url $fal_target {
    default "-";
    "~^https://(?<h>[^/?#]+)(?<p>/[^?#]*)" $h$p;
  }
  upstream fal {
    server {mock};
    keepalive 64;
    keepalive_requests 1000000;
  }
  client_max_body_size 64m;
  keepalive_requests 1000000;
  server {
    listen {listen};
    location /api/fal/proxy {
      if ($fal_path = "") { return 403; }
      proxy_pass http://fal$fal_path;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Key {key}";
      proxy_set_header Cookie "";
      proxy_set_header x-fal-target-url "";
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
}
"#;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    let soak = args.next_if(|arg| arg == "--soak").is_some();
    let proxy_bin = args
        .next()
        .unwrap_or_else(|| "target/release/fal-proxy-server".to_owned());
    let reference_script = args.next();
    if soak {
        let mock = start_mock().await;
        let contender = Contender::start_proxy("fal-proxy", &proxy_bin, &[], mock).await;
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(128)
            .build_http();
        return if soak::run(&client, &contender).await {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        };
    }
    let work = std::env::temp_dir().join(format!("fal-proxy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let input = input_json();
    let script = work.join("post.lua");
    std::fs::write(&script, wrk_script(&input)).expect("wrk script");
    let ticks = clock_ticks().await;
    config_cache_cost();

    let mock = start_mock().await;
    let mut contenders = vec![Contender::start_proxy("fal-proxy", &proxy_bin, &[], mock).await];
    contenders.push(Contender::start_nginx(&work, mock).await);
    if let Some(script) = &reference_script {
        contenders.push(
            Contender::start_proxy("official Node proxy", "node", &[script.as_str()], mock).await,
        );
    }
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(128)
        .build_http();

    let mut table = Table::new(&contenders);
    for connections in LEVELS {
        let direct = wrk(
            &format!("http://{mock}/fal.run{LOAD_PATH}"),
            connections,
            &script,
        )
        .await;
        // Rounds, each contender in turn, so that a change in the machine's
        // load over the minute this takes falls on all of them alike.
        let mut runs: Vec<Rounds> = contenders.iter().map(|_| Rounds::default()).collect();
        for _ in 0..ROUNDS {
            for (contender, rounds) in contenders.iter_mut().zip(&mut runs) {
                let warmup = wrk_for(&contender.url(), connections, &script, WARMUP).await;
                let before = contender.cpu_ticks();
                let run = wrk_for(&contender.url(), connections, &script, LEVEL_TIME).await;
                rounds.cpu += (contender.cpu_ticks() - before) as f64 / ticks;
                contender.served += run.requests + warmup.requests;
                contender.rps = run.rps;
                rounds.add(&run);
            }
        }
        let c = connections;
        table.row(
            &format!("c={c}: requests/s"),
            Some(direct.rps),
            runs.iter().map(Rounds::rps),
            |v| format!("{v:.0}"),
        );
        table.row(
            &format!("c={c}: p50 latency"),
            Some(direct.p50),
            runs.iter().map(|r| median(&r.p50)),
            micros,
        );
        table.row(
            &format!("c={c}: p99 latency"),
            Some(direct.p99),
            runs.iter().map(|r| median(&r.p99)),
            micros,
        );
        table.row(
            &format!("c={c}: **CPU per request**"),
            None,
            runs.iter().map(|r| r.cpu / r.requests as f64),
            micros,
        );
    }

    // Memory after (at least) 100,000 proxied requests: top up with more load.
    let mut after_load = Vec::new();
    for contender in &mut contenders {
        for _ in 0..3 {
            if contender.served >= SERVED_FOR_MEMORY {
                break;
            }
            let left = (SERVED_FOR_MEMORY - contender.served) as f64;
            let secs = (left / contender.rps.max(1.0) * 1.1)
                .clamp(1.0, 60.0)
                .ceil();
            let run = wrk_for(
                &contender.url(),
                32,
                &script,
                Duration::from_secs(secs as u64),
            )
            .await;
            contender.served += run.requests;
            contender.rps = run.rps;
        }
        after_load.push((contender.rss("VmRSS"), contender.served));
    }

    // Bulk transfers: 20 MB up, 10 MB down, one at a time.
    let upload = upload_body();
    let direct_up = transfer(&client, &Route::Direct(mock), Transfer::Up(&upload)).await;
    let direct_down = transfer(&client, &Route::Direct(mock), Transfer::Down).await;
    let mut ups = Vec::new();
    let mut downs = Vec::new();
    for contender in &contenders {
        let route = Route::Proxy(contender.addr);
        let before = contender.cpu_ticks();
        let up = transfer(&client, &route, Transfer::Up(&upload)).await;
        let middle = contender.cpu_ticks();
        let down = transfer(&client, &route, Transfer::Down).await;
        let after = contender.cpu_ticks();
        let per_mb = |ticks_spent: u64, bytes: usize| {
            (ticks_spent as f64 / ticks) / (bytes * TRANSFERS) as f64 * 1e6
        };
        ups.push((up, per_mb(middle - before, UPLOAD_BYTES)));
        downs.push((down, per_mb(after - middle, DOWNLOAD_BYTES)));
    }
    let mb_s = |v: f64| format!("{v:.0} MB/s");
    table.row(
        "20 MB up: MB/s",
        Some(direct_up),
        ups.iter().map(|u| u.0),
        mb_s,
    );
    table.row(
        "20 MB up: CPU per MB",
        None,
        ups.iter().map(|u| u.1),
        micros,
    );
    table.row(
        "10 MB down: MB/s",
        Some(direct_down),
        downs.iter().map(|d| d.0),
        mb_s,
    );
    table.row(
        "10 MB down: CPU per MB",
        None,
        downs.iter().map(|d| d.1),
        micros,
    );

    let direct = first_event(&client, &Route::Direct(mock)).await;
    let mut events = Vec::new();
    for contender in &contenders {
        events.push(first_event(&client, &Route::Proxy(contender.addr)).await);
    }
    table.row(
        &format!("time to first SSE event (median of {SSE_SAMPLES})"),
        Some(direct),
        events.into_iter(),
        micros,
    );

    table.text(
        "memory: RSS at start",
        contenders.iter().map(|c| kib(c.idle_rss)),
    );
    table.text(
        "memory: RSS after 100,000 requests",
        after_load
            .iter()
            .map(|(rss, served)| format!("{} ({served} served)", kib(*rss))),
    );
    table.text(
        "memory: peak RSS (load, transfers)",
        contenders.iter().map(|c| kib(c.rss("VmHWM"))),
    );
    let mut idle = Vec::new();
    for contender in &contenders {
        idle.push(idle_connections(contender).await);
    }
    table.text(
        "memory: RSS with 10,000 idle keep-alive connections",
        idle.into_iter()
            .map(|(rss, open)| format!("{} ({open} open)", kib(rss))),
    );
    table.print();

    for mut contender in contenders {
        // nginx's master stops its workers on SIGTERM; a SIGKILL would
        // leave them running.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(contender.pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(5), contender.child.wait())
            .await
            .is_err()
        {
            let _ = contender.child.kill().await;
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    std::process::ExitCode::SUCCESS
}

/// The Worker's per-request configuration cost, natively: parsing every
/// setting with `Config::from_lookup` (what it did on every request before
/// the per-isolate cache) against the cache's check (read every setting,
/// compare with the values the cached proxy was built from). The lookups
/// here read a map; on the Worker each one is also a call into its `Env`,
/// which both ways pay alike.
fn config_cache_cost() {
    use fal_proxy_core::{Config, vars};
    use std::hint::black_box;
    let settings: &[(&str, &str)] = &[
        (
            vars::FAL_KEY,
            "0123abcd-0000-4000-8000-000000000000:0123456789abcdef0123456789abcdef",
        ),
        (
            vars::ALLOWED_ORIGINS,
            "https://app.example.com,https://staging.app.example.com",
        ),
        (vars::ALLOW_ENDPOINTS, "fal-ai/flux/**,fal-ai/fast-sdxl"),
        (vars::LOG_FORMAT, "json"),
    ];
    let lookup = |name: &str| {
        settings
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    };
    let read = || -> Vec<Option<String>> { vars::ALL.iter().map(|name| lookup(name)).collect() };
    let cached = read();
    let time = |work: &dyn Fn()| {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let started = Instant::now();
            for _ in 0..2_000 {
                work();
            }
            best = best.min(started.elapsed().as_secs_f64() / 2_000.0);
        }
        best
    };
    let parse = time(&|| {
        black_box(Config::from_lookup(lookup).expect("config"));
    });
    let check = time(&|| {
        black_box(read() == cached);
    });
    println!(
        "Worker configuration per request (natively, {} settings, best of 5 × 2,000): \
         parse every request {:.2} µs; per-isolate cache check {:.2} µs ({:.0}× less)\n",
        vars::ALL.len(),
        parse * 1e6,
        check * 1e6,
        parse / check
    );
}

/// The load's request body: a JSON input of exactly 1 KiB.
fn input_json() -> String {
    let head = r#"{"image_size":"square_hd","num_inference_steps":4,"prompt":""#;
    let tail = "\"}";
    let prompt = "a cat in a hat ".repeat(80);
    let mut json = format!("{head}{prompt}");
    json.truncate(1024 - tail.len());
    json.push_str(tail);
    json
}

fn wrk_script(input: &str) -> String {
    format!(
        "wrk.method = \"POST\"\n\
         wrk.body = '{input}'\n\
         wrk.headers[\"content-type\"] = \"application/json\"\n\
         wrk.headers[\"x-fal-target-url\"] = \"https://fal.run{LOAD_PATH}\"\n"
    )
}

/// The JSON body of a bulk upload (the Node proxy parses JSON bodies).
fn upload_body() -> Bytes {
    let mut body = Vec::with_capacity(UPLOAD_BYTES);
    body.extend_from_slice(b"{\"data\":\"");
    body.resize(UPLOAD_BYTES - 2, b'a');
    body.extend_from_slice(b"\"}");
    Bytes::from(body)
}

async fn clock_ticks() -> f64 {
    let output = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .await
        .expect("getconf");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK")
}

/// A proxy under measurement, in its own process(es), pointed at the mock.
struct Contender {
    name: &'static str,
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
    idle_rss: u64,
    served: u64,
    /// Requests/s in the last load run.
    rps: f64,
}

impl Contender {
    /// Starts `program args` and waits for its `listening on http://ADDR` line.
    async fn start_proxy(
        name: &'static str,
        program: &str,
        args: &[&str],
        mock: SocketAddr,
    ) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("FAL_KEY", FAL_KEY)
            .env("FAL_PROXY_UPSTREAM", format!("http://{mock}"))
            // The derived connection cap (half the open-file limit) would
            // start shedding idle connections before the idle figure's 10,000.
            .env("FAL_PROXY_MAX_CONNECTIONS", "16000")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {program}: {error}"));
        let pid = child.id().expect("pid");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let addr: SocketAddr = loop {
            let line = lines
                .next_line()
                .await
                .expect("stderr")
                .unwrap_or_else(|| panic!("{name} exited before listening"));
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .expect("address")
                    .parse()
                    .expect("address");
            }
        };
        // Drain (and drop) the per-request log lines so the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self::started(name, child, pid, addr)
    }

    /// Starts nginx, unprivileged, on a free port with [`NGINX_CONF`].
    async fn start_nginx(work: &Path, mock: SocketAddr) -> Self {
        let prefix = work.join("nginx");
        std::fs::create_dir_all(prefix.join("logs")).expect("nginx dir");
        let addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            probe.local_addr().expect("addr")
        };
        let conf = NGINX_CONF
            .replace("{listen}", &addr.to_string())
            .replace("{mock}", &mock.to_string())
            .replace("{key}", FAL_KEY);
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let mut child = Command::new(nginx_binary())
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg("stderr")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start nginx: {error}"));
        let pid = child.id().expect("pid");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("[emerg]") || line.contains("[alert]") {
                    eprintln!("nginx: {line}");
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "nginx did not start listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Both workers up before the idle figure.
        while children(pid).len() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self::started("nginx", child, pid, addr)
    }

    fn started(
        name: &'static str,
        child: tokio::process::Child,
        pid: u32,
        addr: SocketAddr,
    ) -> Self {
        let mut contender = Self {
            name,
            child,
            pid,
            addr,
            idle_rss: 0,
            served: 0,
            rps: 0.0,
        };
        contender.idle_rss = contender.rss("VmRSS");
        contender
    }

    fn url(&self) -> String {
        format!("http://{}/api/fal/proxy", self.addr)
    }

    /// The process and its children (nginx's workers).
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid];
        pids.extend(children(self.pid));
        pids
    }

    /// User + system time of the process and its children, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        self.pids().into_iter().map(cpu_ticks).sum()
    }

    /// A `/proc/<pid>/status` memory field summed over the processes, KiB
    /// (for nginx an upper bound: pages the workers share count twice).
    fn rss(&self, field: &str) -> u64 {
        self.pids()
            .into_iter()
            .map(|pid| memory_kib(pid, field))
            .sum()
    }
}

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("nginx"))
}

/// The pids whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat_fields(*pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(parent))
        .collect()
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3 on).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime (fields 14 and 15) of one process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    stat_fields(pid)
        .map(|fields| {
            [11, 12]
                .iter()
                .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// What one `wrk` run measured.
struct WrkRun {
    rps: f64,
    p50: f64,
    p99: f64,
    requests: u64,
}

/// A warm-up, then a measured `wrk` run of [`LEVEL_TIME`].
async fn wrk(url: &str, connections: usize, script: &Path) -> WrkRun {
    wrk_for(url, connections, script, WARMUP).await;
    wrk_for(url, connections, script, LEVEL_TIME).await
}

/// One contender's measured runs at one level, summed: CPU seconds over
/// the measured runs only (not their warm-ups), and the requests they served.
#[derive(Default)]
struct Rounds {
    cpu: f64,
    requests: u64,
    seconds: f64,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

impl Rounds {
    fn add(&mut self, run: &WrkRun) {
        self.requests += run.requests;
        self.seconds += run.requests as f64 / run.rps;
        self.p50.push(run.p50);
        self.p99.push(run.p99);
    }

    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// The median of a few values (the upper one of the middle two).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

async fn wrk_for(url: &str, connections: usize, script: &Path, time: Duration) -> WrkRun {
    let output = Command::new("wrk")
        .args(["-t1", "--latency", "-c"])
        .arg(connections.to_string())
        .arg("-d")
        .arg(format!("{}s", time.as_secs()))
        .arg("-s")
        .arg(script)
        .arg(url)
        .output()
        .await
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "wrk against {url} failed:\n{text}"
    );
    let after = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(prefix))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {prefix:?} in wrk's output:\n{text}"))
    };
    let requests = text
        .lines()
        .find(|line| line.contains(" requests in "))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("request count");
    WrkRun {
        rps: after("Requests/sec:").parse().expect("rps"),
        p50: seconds(after("50%")),
        p99: seconds(after("99%")),
        requests,
    }
}

/// wrk's `123.45us`, `1.23ms`, `1.00s` in seconds.
fn seconds(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().expect("latency");
    number
        * match unit {
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            other => panic!("unit {other}"),
        }
}

#[derive(Clone, Copy)]
enum Route {
    Direct(SocketAddr),
    Proxy(SocketAddr),
}

impl Route {
    fn request(&self, path: &str, accept: &str, body: Bytes) -> http::Request<Full<Bytes>> {
        let builder = match self {
            Route::Direct(addr) => http::Request::post(format!("http://{addr}/fal.run{path}")),
            Route::Proxy(addr) => http::Request::post(format!("http://{addr}/api/fal/proxy"))
                .header("x-fal-target-url", format!("https://fal.run{path}")),
        };
        builder
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(Full::new(body))
            .expect("request")
    }
}

enum Transfer<'a> {
    Up(&'a Bytes),
    Down,
}

/// [`TRANSFERS`] bulk transfers one after another: MB/s.
async fn transfer(client: &HttpClient, route: &Route, kind: Transfer<'_>) -> f64 {
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..TRANSFERS {
        let request = match &kind {
            Transfer::Up(body) => {
                bytes += body.len();
                route.request(
                    "/fal-ai/bench/upload",
                    "application/json",
                    Bytes::clone(body),
                )
            }
            Transfer::Down => {
                bytes += DOWNLOAD_BYTES;
                route.request("/fal-ai/bench/download", "*/*", Bytes::from_static(b"{}"))
            }
        };
        let response = client.request(request).await.expect("response");
        assert_eq!(response.status(), 200);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        match kind {
            Transfer::Up(upload) => assert_eq!(body, upload.len().to_string()),
            Transfer::Down => assert_eq!(body.len(), DOWNLOAD_BYTES),
        }
    }
    bytes as f64 / 1e6 / started.elapsed().as_secs_f64()
}

async fn first_event(client: &HttpClient, route: &Route) -> f64 {
    let mut samples = Vec::new();
    for _ in 0..SSE_SAMPLES {
        let sent = Instant::now();
        let response = client
            .request(route.request(
                "/fal-ai/bench/stream",
                "text/event-stream",
                Bytes::from_static(b"{}"),
            ))
            .await
            .expect("response");
        let mut body = response.into_body();
        loop {
            let frame = body.frame().await.expect("first event").expect("frame");
            if frame
                .data_ref()
                .is_some_and(|data| data.starts_with(b"data:"))
            {
                samples.push(sent.elapsed());
                break;
            }
        }
        // Drain the rest, so the connection goes back to the pool.
        while body.frame().await.is_some() {}
    }
    samples.sort();
    samples[samples.len() / 2].as_secs_f64()
}

/// Opens [`IDLE_CONNECTIONS`] keep-alive connections to the proxy, sends one
/// request on each, and reads the proxy's RSS while they sit idle: the RSS,
/// and how many were still open when it was read.
async fn idle_connections(contender: &Contender) -> (u64, usize) {
    let route = Route::Proxy(contender.addr);
    let mut held = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS / 100 {
        let mut batch = Vec::new();
        for _ in 0..100 {
            batch.push(tokio::spawn(async move {
                let stream = TcpStream::connect(route_addr(&route)).await.ok()?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .ok()?;
                let connection = tokio::spawn(connection);
                // A connection of its own takes the origin form and a `Host`.
                let request = http::Request::post("/api/fal/proxy")
                    .header("host", route_addr(&route).to_string())
                    .header("x-fal-target-url", format!("https://fal.run{LOAD_PATH}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .ok()?;
                let response = sender.send_request(request).await.ok()?;
                if response.status() != 200 {
                    return None;
                }
                response.into_body().collect().await.ok()?;
                Some((sender, connection))
            }));
        }
        for task in batch {
            if let Ok(Some(connection)) = task.await {
                held.push(connection);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = contender.rss("VmRSS");
    let open = held
        .iter()
        .filter(|(_, connection)| !connection.is_finished())
        .count();
    for (_, connection) in &held {
        connection.abort();
    }
    (rss, open)
}

fn route_addr(route: &Route) -> SocketAddr {
    match route {
        Route::Direct(addr) | Route::Proxy(addr) => *addr,
    }
}

/// A mock fal: JSON results at once; `.../stream` with a first event at once
/// and the last one 20 ms later; `.../upload` answers the byte count it
/// read; `.../download` sends 10 MB.
async fn start_mock() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(mock_fal);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

type MockBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn mock_fal(
    request: http::Request<Incoming>,
) -> Result<http::Response<MockBody>, Infallible> {
    let path = request.uri().path().to_owned();
    let read = request
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes().len())
        .unwrap_or(0);
    let full = |content_type: &str, body: Bytes| {
        Ok(http::Response::builder()
            .header("content-type", content_type)
            .body(Full::new(body).boxed())
            .expect("response"))
    };
    if path.ends_with("/upload") {
        return full("application/json", Bytes::from(read.to_string()));
    }
    if path.ends_with("/download") {
        static DOWNLOAD: OnceLock<Bytes> = OnceLock::new();
        let body = DOWNLOAD.get_or_init(|| Bytes::from(vec![b'x'; DOWNLOAD_BYTES]));
        return full("application/octet-stream", Bytes::clone(body));
    }
    if !path.ends_with("/stream") {
        return full(
            "application/json",
            Bytes::from_static(RESULT_JSON.as_bytes()),
        );
    }
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let _ = sender
            .send(Bytes::from_static(b"data: {\"n\":0}\n\n"))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = sender
            .send(Bytes::from_static(b"data: {\"n\":1}\n\n"))
            .await;
    });
    let response = http::Response::builder()
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(ChannelBody(receiver)))
        .expect("response");
    Ok(response)
}

/// A body fed by a channel: each message one frame, as the mock sends it.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|data| data.map(|data| Ok(Frame::data(data))))
    }
}

fn memory_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

fn micros(seconds: f64) -> String {
    if seconds >= 0.1 {
        format!("{:.0} ms", seconds * 1e3)
    } else {
        format!("{:.0} µs", seconds * 1e6)
    }
}

fn kib(kib: u64) -> String {
    format!("{kib} KiB")
}

/// The Markdown table: one column per contender, then each one's ratio to
/// nginx (the second contender).
struct Table {
    names: Vec<&'static str>,
    lines: Vec<String>,
}

impl Table {
    fn new(contenders: &[Contender]) -> Self {
        Self {
            names: contenders.iter().map(|c| c.name).collect(),
            lines: Vec::new(),
        }
    }

    fn row(
        &mut self,
        what: &str,
        direct: Option<f64>,
        values: impl Iterator<Item = f64>,
        show: impl Fn(f64) -> String,
    ) {
        let values: Vec<f64> = values.collect();
        let mut line = format!(
            "| {what} | {} |",
            direct.map(&show).unwrap_or_else(|| "–".to_owned())
        );
        for value in &values {
            line.push_str(&format!(" {} |", show(*value)));
        }
        let nginx = values.get(1).copied().unwrap_or(f64::NAN);
        for (i, value) in values.iter().enumerate() {
            if i != 1 {
                line.push_str(&format!(" {:.2} |", value / nginx));
            }
        }
        self.lines.push(line);
    }

    fn text(&mut self, what: &str, values: impl Iterator<Item = String>) {
        let mut line = format!("| {what} | – |");
        for value in values {
            line.push_str(&format!(" {value} |"));
        }
        for _ in 1..self.names.len() {
            line.push_str(" |");
        }
        self.lines.push(line);
    }

    fn print(&self) {
        let mut header = String::from("| what | direct to mock |");
        let mut rule = String::from("|---|---|");
        for name in &self.names {
            header.push_str(&format!(" {name} |"));
            rule.push_str("---|");
        }
        for (i, name) in self.names.iter().enumerate() {
            if i != 1 {
                header.push_str(&format!(" {name} / nginx |"));
                rule.push_str("---|");
            }
        }
        println!("{header}\n{rule}");
        for line in &self.lines {
            println!("{line}");
        }
    }
}
