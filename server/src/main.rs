//! fal-proxy as a native HTTP server, for local development and self-hosting.
//!
//! `cargo run --release -p fal-proxy-server` listens on `HOST`:`PORT`
//! (default `127.0.0.1:3000`) and serves `/api/fal/proxy` and every path
//! below it. All settings come from the environment (see the README); a bad
//! one stops the server at start with the variable's name. With no key it
//! starts in `user` mode, where each visitor sends their own fal key. Bound
//! to loopback, it answers only to loopback host names unless
//! `FAL_PROXY_ALLOWED_HOSTS` says otherwise (DNS-rebinding protection).
//!
//! With `FAL_PROXY_RATE_LIMIT`, requests are counted per user (or per
//! client address: the peer's, or with `FAL_PROXY_CLIENT_IP_HEADER` the one
//! your load balancer forwards) in the store `FAL_PROXY_RATE_STORE` names.
//!
//! It also serves the playground page (`public/`, embedded in the binary) at
//! `/`, unless `FAL_PROXY_PLAYGROUND=off`.
//!
//! Bound beyond loopback (`HOST=0.0.0.0`), it refuses to start without
//! `FAL_PROXY_ALLOWED_HOSTS` (`*` opts out of the Host check explicitly).
//! It raises its soft open-file limit to the hard one and caps open
//! connections (`FAL_PROXY_MAX_CONNECTIONS`, derived from that limit),
//! shedding silent and idle ones first, so a flood of silent connections
//! cannot lock clients out.
//!
//! It logs one line per request (method, target host and path, status,
//! duration, bytes; the error, an unreachable upstream's cause, a refused
//! origin) and never a key or a query, as text or, with
//! `FAL_PROXY_LOG_FORMAT=json`, one JSON object per line; and a hint, once
//! per origin, when a browser page is blocked by CORS. At start it says what
//! a page on another origin needs. SIGTERM or Ctrl-C stops accepting, lets
//! open requests finish for up to ten seconds, then exits.

mod connections;
mod log_lines;
mod playground;

use connections::{AcceptErrors, Connections, InFlight};
use fal_proxy_core::{
    Config, DrainOnDrop, Hints, Level, LogFormat, LogLine, LoggedBody, NativeStore, PROXY_PATH,
    Proxy, ProxyBody, ProxyError, RequestContext, ReqwestBody, ReqwestUpstream,
    forwarded_client_ip, vars,
};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;

/// The host names a loopback-bound server answers to by default.
const LOOPBACK_HOSTS: &str = "localhost,127.0.0.1,[::1]";

/// How long open requests may run on after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Hints already written (once per origin, rate-limited).
static HINTS: Hints = Hints::new();

/// One thread runs everything. Measured on a 2-core machine (README,
/// "Benchmark"): the work-stealing runtime spent about a quarter more CPU
/// per request on waking and searching between its workers than the
/// request itself costs, and one thread already serves tens of thousands of
/// requests a second, far more than any fal account sends.
fn main() -> ExitCode {
    let ran = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(log_lines::parked)
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))
        .and_then(|runtime| runtime.block_on(run()));
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            let format = LogFormat::from_lookup(|name| std::env::var(name).ok());
            say(format, Level::Error, message);
            ExitCode::FAILURE
        }
    }
}

/// Writes one line of the server's own to stderr, in the configured format.
fn say(format: LogFormat, level: Level, message: impl Into<String>) {
    log_lines::flush();
    eprintln!("{}", LogLine::message(level, message).render(format));
}

async fn run() -> Result<(), String> {
    let env = |name: &str| std::env::var(name).ok();
    let address = listen_address(env)?;
    // On loopback, answer only to loopback names unless told otherwise: a
    // web page whose DNS name is rebound to 127.0.0.1 must not be able to
    // use the key (its requests carry its own name in `Host`).
    let loopback = address.ip().is_loopback();
    if !loopback && env(vars::ALLOWED_HOSTS).is_none_or(|hosts| hosts.trim().is_empty()) {
        return Err(format!(
            "refusing to listen on {address} without {}: a web page whose DNS name is re-pointed at this address could use the key. Set it to the host names clients use (for example proxy.example.com), or to * to answer any Host",
            vars::ALLOWED_HOSTS
        ));
    }
    let open_files = connections::raise_open_file_limit();
    let cap = connections::cap(env(connections::MAX_CONNECTIONS_VAR), open_files)?;
    let lookup = |name: &str| {
        let value = env(name).filter(|value| !value.trim().is_empty());
        if name == vars::ALLOWED_HOSTS && value.is_none() && loopback {
            return Some(LOOPBACK_HOSTS.to_owned());
        }
        value
    };
    let config = Config::from_lookup(lookup).map_err(|error| error.to_string())?;
    let playground = playground::enabled(env(vars::PLAYGROUND).as_deref())?;
    let upstream = ReqwestUpstream::new(&config)
        .map_err(|error| format!("cannot build the HTTP client: {error}"))?;
    let store = Arc::new(NativeStore::new(&config).map_err(|error| error.to_string())?);
    let client_ip_header = client_ip_header(env(vars::CLIENT_IP_HEADER))?;
    let format = config.log_format();
    if let Some(warning) = config.upstream_warning() {
        eprintln!("{}", warning.render(format));
    }
    let summary = config.summary();
    let proxy = Arc::new(Proxy::new(config, "native"));
    let upstream = Arc::new(upstream);

    let connections = Connections::new(cap);
    match open_files {
        Some(limit) => say(
            format,
            Level::Info,
            format!("max connections: {cap} (open-file limit {limit})"),
        ),
        None => say(format, Level::Info, format!("max connections: {cap}")),
    }

    let listener = TcpListener::bind(address)
        .await
        .map_err(|error| format!("cannot listen on {address}: {error}"))?;
    let bound = listener.local_addr().map_err(|error| error.to_string())?;
    say(
        format,
        Level::Info,
        format!("listening on http://{bound} (proxy at http://{bound}{PROXY_PATH}); {summary}"),
    );
    let playground_url =
        playground.then(|| format!("http://{bound}/ ({}=off turns it off)", vars::PLAYGROUND));
    say(
        format,
        Level::Info,
        proxy
            .config()
            .browser_summary(Some(&format!("http://{bound}")), playground_url.as_deref()),
    );

    tokio::spawn(heartbeat(Arc::clone(&connections)));
    tokio::spawn(log_lines::writer());
    let mut http = hyper::server::conn::http1::Builder::new();
    // The head timeout is the registry's (`connections::HEAD_TIMEOUT`).
    http.header_read_timeout(None);
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let mut accept_errors = AcceptErrors::default();
    let mut pacing = Duration::ZERO;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(connection) => connection,
                    Err(error) => {
                        if let Some(suppressed) = accept_errors.record(Instant::now()) {
                            say(format, Level::Warn, format!("accept failed: {error} ({suppressed} more since the last line)"));
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let stream = Arc::new(stream);
                // Over the cap with every connection busy: close at once.
                let Some(admitted) = connections.admit(Some(Arc::clone(&stream))) else {
                    continue;
                };
                let pace = admitted.pace();
                let proxy = Arc::clone(&proxy);
                let upstream = Arc::clone(&upstream);
                let slot = Arc::clone(admitted.slot());
                let stream = connections::Watched::new(stream, Arc::clone(&slot));
                let store = Arc::clone(&store);
                let client_ip_header = client_ip_header.clone();
                let peer_ip = peer.ip();
                let service = service_fn(move |request: http::Request<Incoming>| {
                    // Behind your own load balancer, the address it forwards.
                    let client_ip = client_ip_header
                        .as_ref()
                        .and_then(|header| forwarded_client_ip(request.headers(), header.as_str()))
                        .unwrap_or(peer_ip);
                    handle(Arc::clone(&proxy), Arc::clone(&upstream), Arc::clone(&store), playground, client_ip, slot.request(), request)
                });
                let connection = http.serve_connection(TokioIo::new(stream), service);
                tokio::spawn(async move {
                    admitted.slot().serve(connection, |connection| connection.graceful_shutdown()).await;
                    drop(admitted);
                });
                // While shedding, pace the accepts (see `connections`); the
                // timer's resolution is a millisecond, so short waits add up.
                pacing += pace;
                if pacing >= Duration::from_millis(1) {
                    tokio::time::sleep(std::mem::take(&mut pacing)).await;
                } else {
                    tokio::task::yield_now().await;
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    say(
        format,
        Level::Info,
        format!(
            "shutting down; waiting up to {}s for open requests",
            DRAIN_TIMEOUT.as_secs()
        ),
    );
    connections.drain();
    tokio::select! {
        () = connections.closed() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => say(format, Level::Warn, "open requests cut off"),
    }
    Ok(())
}

async fn handle(
    proxy: Arc<Proxy>,
    upstream: Arc<ReqwestUpstream>,
    store: Arc<NativeStore>,
    playground: bool,
    client_ip: IpAddr,
    in_flight: InFlight,
    request: http::Request<Incoming>,
) -> Result<http::Response<LoggedBody<ReqwestBody>>, std::convert::Infallible> {
    let started = Instant::now();
    // The page's files hold nothing secret, so they are served whatever the
    // `Host`; the requests the page then makes pass the proxy's host check.
    if playground && let Some(page) = playground::serve(&request) {
        return Ok(LoggedBody::wrap(page.map(ProxyBody::Full), started, |_| {}));
    }
    // A refused request's unread body is read out, so the browser gets the answer.
    let request = request.map(DrainOnDrop::new);
    let context = RequestContext::new(SystemTime::now(), Some(client_ip));
    let (mut response, exchange) = proxy
        .exchange(upstream.as_ref(), store.as_ref(), request, Some(context))
        .await;
    // A stalled body is not read out: close the connection after the answer.
    if exchange.error() == Some(ProxyError::RequestBodyTimeout) {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    if let Some(hint) = HINTS.line_for(&exchange, now) {
        log_lines::flush();
        eprintln!("{hint}");
    }
    // The connection counts as busy until the response body is done.
    Ok(LoggedBody::wrap_with(
        response,
        Some(exchange),
        started,
        move |line| {
            log_lines::push(line, in_flight.slot());
            drop(in_flight);
        },
    ))
}

/// Every [`connections::TICK`], closes the connections that have waited
/// too long for a request's head (see `connections`). Being always due
/// within a tick, it also spares tokio's timer a wake-up of its own thread
/// (an `eventfd` write, and one more event from `epoll`), which it makes
/// whenever a timer is set earlier than the earliest one it has, as each
/// upstream request's deadline would be with few connections.
async fn heartbeat(connections: Arc<Connections>) {
    let started = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(connections::TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        connections.tick(started.elapsed());
    }
}

/// `FAL_PROXY_CLIENT_IP_HEADER`: the header your own load balancer writes
/// the client's address in (its last address is taken). Off by default:
/// a client could write any such header itself.
fn client_ip_header(value: Option<String>) -> Result<Option<http::HeaderName>, String> {
    let Some(value) = value.filter(|value| !value.trim().is_empty()) else {
        return Ok(None);
    };
    let name = http::HeaderName::try_from(value.trim().to_ascii_lowercase()).map_err(|_| {
        format!(
            "invalid {}: expected a header name such as x-forwarded-for",
            vars::CLIENT_IP_HEADER
        )
    })?;
    Ok(Some(name))
}

fn listen_address(env: impl Fn(&str) -> Option<String>) -> Result<SocketAddr, String> {
    let host = env("HOST")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let host: IpAddr = host.parse().map_err(|_| {
        "invalid HOST: expected an IP address such as 127.0.0.1 or 0.0.0.0".to_owned()
    })?;
    let port = match env("PORT").filter(|p| !p.is_empty()) {
        None => 3000,
        Some(port) => port
            .parse::<u16>()
            .map_err(|_| "invalid PORT: expected a number from 0 to 65535".to_owned())?,
    };
    Ok(SocketAddr::new(host, port))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
