//! Which connections the native server keeps open, so that a flood of
//! silent connections cannot lock legitimate clients out.
//!
//! Every accepted connection is registered. From seven eighths of the cap
//! on, each new connection sheds an older one that has no request in
//! flight: first the oldest that has never sent a byte, then the oldest idle
//! or header-incomplete one; at the cap with none to shed, the new
//! connection is closed at once. A connection whose request is in flight (a
//! stream, an upload) is never shed. A connection with bytes waiting in its
//! socket counts as having spoken (checked with a peek, which consumes
//! nothing), so a client that sent its request is not shed for a silent
//! flood before its task got to read the head, however fast the flood
//! reconnects. While shedding, accepting is paced so that a connection lives
//! at least [`MIN_LIFE`] before it can be shed: a flood then waits in the
//! kernel's backlog, and so does a legitimate client, whose request is
//! therefore already waiting (and seen) when it is accepted. The cap leaves
//! room in the open-file limit for the upstream
//! connection each request needs, so `accept` does not run out of files.
//!
//! The registry also closes a connection that has waited longer than
//! [`HEAD_TIMEOUT`] for a request's head (from its accept, from the end of
//! its last answer's body, or from the last write that had waited for a
//! slow reader; never while an answer's bytes wait for one): the heartbeat
//! sweeps it every [`TICK`], and a connection found overdue is not polled
//! again, so a head that came in the same pass starts no request.
//! hyper's own header-read timeout did that with a timer per connection,
//! set and taken down around every request's head; here the end of each
//! answer only notes the time, from a clock the sweep keeps.

use std::collections::BTreeMap;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The setting that overrides the derived cap.
pub const MAX_CONNECTIONS_VAR: &str = "FAL_PROXY_MAX_CONNECTIONS";

/// Files kept for everything but connections (stdio, the runtime, the
/// listener, DNS, TLS roots).
const RESERVED_FILES: u64 = 64;

/// The least time a connection is kept before it may be shed.
pub const MIN_LIFE: Duration = Duration::from_millis(50);

/// How long a client may take to send a request's head, counted from the
/// connection's accept or from the end of its last answer's body (an idle
/// keep-alive connection is closed after it too).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the heartbeat sweeps for overdue connections, and the
/// resolution of the clock the sweep keeps: a connection is closed between
/// [`HEAD_TIMEOUT`] and [`HEAD_TIMEOUT`] plus three ticks after its wait
/// began.
pub const TICK: Duration = Duration::from_millis(250);

/// [`HEAD_TIMEOUT`] in [`TICK`]s.
const HEAD_TICKS: u32 = (HEAD_TIMEOUT.as_millis() / TICK.as_millis()) as u32;

/// [`TICK`]s since the server started, as the last sweep read the clock.
static NOW: AtomicU32 = AtomicU32::new(0);

/// The smallest and largest derived caps.
const MIN_CAP: u64 = 16;
const MAX_CAP: u64 = 1_000_000;

/// Raises the soft open-file limit to the hard one and returns the limit in
/// force (`None` where it cannot be read).
pub fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => Some(limit),
            Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft),
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The cap: `FAL_PROXY_MAX_CONNECTIONS` when set, else half of what the
/// open-file limit leaves after a reserve (each request holds two files:
/// the browser's connection and the upstream one).
pub fn cap(setting: Option<String>, open_files: Option<u64>) -> Result<usize, String> {
    let cap = match setting.filter(|value| !value.trim().is_empty()) {
        Some(value) => value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|cap| (1..=MAX_CAP).contains(cap))
            .ok_or_else(|| {
                format!("invalid {MAX_CONNECTIONS_VAR}: expected a number from 1 to {MAX_CAP}")
            })?,
        None => match open_files {
            Some(limit) => (limit.saturating_sub(RESERVED_FILES) / 2).clamp(MIN_CAP, MAX_CAP),
            None => 4096,
        },
    };
    usize::try_from(cap).map_err(|_| format!("invalid {MAX_CONNECTIONS_VAR}: too large"))
}

/// The open connections, oldest first.
#[derive(Debug)]
pub struct Connections {
    cap: usize,
    registry: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    open: BTreeMap<u64, Arc<Slot>>,
}

/// One connection's state, shared with its task and its requests.
#[derive(Debug, Default)]
pub struct Slot {
    in_flight: AtomicUsize,
    spoken: AtomicBool,
    shed: Notify,
    /// Set before `shed` is notified (see [`Slot::serve`]).
    shedding: AtomicBool,
    /// Set before `shed` is notified: the server is shutting down.
    draining: AtomicBool,
    /// The connection's socket (shared with its task), to peek at.
    stream: Option<Arc<TcpStream>>,
    /// Set while the line of this connection's last request waits to be
    /// written (see `log_lines`); its writes wait until it is.
    line_pending: AtomicBool,
    /// The task waiting for that line to be written.
    line_waiter: Mutex<Option<Waker>>,
    /// The tick at which the connection began to wait for a request's head
    /// (accepted, or its last request's answer body ended).
    idle_since: AtomicU32,
    /// The last write found the socket full: hyper still holds bytes of an
    /// answer (it reads the next head, and hyper timed it, only once they
    /// are flushed).
    write_blocked: AtomicBool,
}

impl Slot {
    fn mark_spoken(&self) {
        self.spoken.store(true, Ordering::Relaxed);
    }

    /// Whether the client ever sent a byte, read or still waiting.
    fn has_spoken(&self) -> bool {
        if self.spoken.load(Ordering::Relaxed) {
            return true;
        }
        let waiting = self.stream.as_ref().is_some_and(|stream| {
            let mut byte = [MaybeUninit::uninit()];
            // Non-blocking, consumes nothing, leaves the task's wake-up alone.
            socket2::SockRef::from(stream.as_ref())
                .peek(&mut byte)
                .is_ok_and(|n| n > 0)
        });
        if waiting {
            self.mark_spoken();
        }
        waiting
    }

    /// A write found the socket full.
    fn write_blocked(&self) {
        self.write_blocked.store(true, Ordering::Relaxed);
    }

    /// A write went through: if the socket had been full, the wait for a
    /// head starts again from now.
    fn wrote(&self) {
        if self.write_blocked.load(Ordering::Relaxed) {
            self.idle_since
                .store(NOW.load(Ordering::Relaxed), Ordering::Relaxed);
            self.write_blocked.store(false, Ordering::Relaxed);
        }
    }

    /// No request in flight, and no line of one waiting to be written
    /// (its answer's last bytes may wait for it).
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0 && !self.line_pending.load(Ordering::SeqCst)
    }

    /// Marks a request in flight until the guard is dropped (with the
    /// response body, so a stream counts until it ends).
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }

    /// A line of this connection's waits to be written: its writes wait.
    pub fn line_queued(&self) {
        self.line_pending.store(true, Ordering::SeqCst);
    }

    /// The line is written: the connection's writes go on.
    pub fn line_written(&self) {
        self.line_pending.store(false, Ordering::SeqCst);
        let waiter = self
            .line_waiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waiter {
            waker.wake();
        }
    }

    /// Ready when no line of this connection waits to be written; otherwise
    /// the task is woken when it has been.
    fn poll_line_written(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.line_pending.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        *self
            .line_waiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        // Written in between: nothing will wake the task, so go on now.
        if self.line_pending.load(Ordering::SeqCst) {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Tells the connection's task to close it.
    fn raise_shed(&self) {
        self.shedding.store(true, Ordering::SeqCst);
        self.shed.notify_one();
    }

    /// Tells the connection's task to finish what it is doing and close.
    fn raise_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.shed.notify_one();
    }

    /// Runs `connection` until it ends or the connection is shed to make
    /// room (dropping it closes the connection); when the server shuts down
    /// ([`Connections::drain`]), `drain` is called on it once (hyper's
    /// `graceful_shutdown`: an idle connection closes, one with a request
    /// in flight closes after its answer) and it runs on to its end. The
    /// signal is polled on the first wake-up, when the task's waker changes,
    /// and once it is raised, not on every wake-up of a busy connection:
    /// each poll of a `Notify` waiter takes its lock.
    pub async fn serve<F: Future>(&self, connection: F, drain: impl FnOnce(Pin<&mut F>)) {
        let mut connection = std::pin::pin!(connection);
        let mut signal = std::pin::pin!(self.shed.notified());
        let mut registered: Option<std::task::Waker> = None;
        let mut drain = Some(drain);
        std::future::poll_fn(|cx| {
            loop {
                // Shed or timed out: not polled again, so a head that came
                // meanwhile is not read and its request not started.
                if self.shedding.load(Ordering::SeqCst) {
                    return Poll::Ready(());
                }
                if connection.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                let stale = registered
                    .as_ref()
                    .is_none_or(|waker| !waker.will_wake(cx.waker()));
                let raised = self.shedding.load(Ordering::SeqCst)
                    || (drain.is_some() && self.draining.load(Ordering::SeqCst));
                if !(stale || raised) {
                    return Poll::Pending;
                }
                if signal.as_mut().poll(cx).is_pending() {
                    registered = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                // Signalled: the flags say what for (shedding ends the
                // connection at the loop's top).
                signal.set(self.shed.notified());
                registered = None;
                if self.draining.load(Ordering::SeqCst)
                    && let Some(drain) = drain.take()
                {
                    drain(connection.as_mut());
                }
            }
        })
        .await;
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Slot>);

impl InFlight {
    /// The connection's shared state.
    pub fn slot(&self) -> &Arc<Slot> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Before the count, so a sweep that sees it at zero sees the time.
        self.0
            .idle_since
            .store(NOW.load(Ordering::Relaxed), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An admitted connection; dropping it unregisters the connection.
#[derive(Debug)]
pub struct Admitted {
    connections: Arc<Connections>,
    id: u64,
    slot: Arc<Slot>,
    shed_another: bool,
}

impl Admitted {
    /// How long to wait before the next accept: while connections are being
    /// shed, long enough that each lives [`MIN_LIFE`] before its turn.
    pub fn pace(&self) -> Duration {
        if self.shed_another {
            MIN_LIFE / u32::try_from(self.connections.cap).unwrap_or(u32::MAX)
        } else {
            Duration::ZERO
        }
    }

    /// The connection's shared state.
    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.connections.lock().open.remove(&self.id);
    }
}

impl Connections {
    /// Admits at most `cap` connections at a time.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            registry: Mutex::new(Registry::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection, shedding the oldest idle one near the
    /// cap; `None` when the cap is reached and every connection is busy.
    pub fn admit(self: &Arc<Self>, stream: Option<Arc<TcpStream>>) -> Option<Admitted> {
        let mut registry = self.lock();
        let high_water = self.cap - self.cap / 8;
        let mut shed_another = false;
        if registry.open.len() >= high_water {
            let silent = registry
                .open
                .iter()
                .find(|(_, slot)| slot.is_idle() && !slot.has_spoken());
            let victim = silent
                .or_else(|| registry.open.iter().find(|(_, slot)| slot.is_idle()))
                .map(|(&id, _)| id);
            match victim.and_then(|id| registry.open.remove(&id)) {
                Some(slot) => {
                    slot.raise_shed();
                    shed_another = true;
                }
                None if registry.open.len() >= self.cap => return None,
                None => {}
            }
        }
        let id = registry.next_id;
        registry.next_id += 1;
        let slot = Arc::new(Slot {
            stream,
            idle_since: AtomicU32::new(NOW.load(Ordering::Relaxed)),
            ..Slot::default()
        });
        registry.open.insert(id, Arc::clone(&slot));
        Some(Admitted {
            connections: Arc::clone(self),
            id,
            slot,
            shed_another,
        })
    }

    /// Shutting down: each open connection finishes its request in flight,
    /// if any, and closes (see [`Slot::serve`]).
    pub fn drain(&self) {
        for slot in self.lock().open.values() {
            slot.raise_drain();
        }
    }

    /// Ready once every connection has closed (checked every 10 ms: this
    /// is for a shutdown).
    pub async fn closed(&self) {
        while !self.lock().open.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The heartbeat: sets the clock to `elapsed` since the server started
    /// and closes the connections overdue for a request's head.
    pub fn tick(&self, elapsed: Duration) {
        let now = u32::try_from(elapsed.as_millis() / TICK.as_millis()).unwrap_or(u32::MAX);
        NOW.store(now, Ordering::Relaxed);
        self.close_overdue(now);
    }

    /// Closes (and unregisters) each connection with no request in flight
    /// that began waiting for a head more than [`HEAD_TIMEOUT`] before tick
    /// `now`.
    fn close_overdue(&self, now: u32) {
        // One tick more: the clock read when the wait began was up to a
        // tick behind the time.
        let limit = HEAD_TICKS + 1;
        self.lock().open.retain(|_, slot| {
            let overdue = slot.is_idle()
                && !slot.write_blocked.load(Ordering::Relaxed)
                && now.saturating_sub(slot.idle_since.load(Ordering::Relaxed)) > limit;
            if overdue {
                slot.raise_shed();
            }
            !overdue
        });
    }

    /// How many connections are registered.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().open.len()
    }
}

/// A connection's stream, shared with its slot (which peeks at it), that
/// marks the slot as spoken on the first byte read. I/O goes through the
/// `&TcpStream` readiness API, as tokio documents for shared streams.
#[derive(Debug)]
pub struct Watched {
    stream: Arc<TcpStream>,
    slot: Arc<Slot>,
}

impl Watched {
    /// Wraps `stream`, accepted for `slot`.
    pub fn new(stream: Arc<TcpStream>, slot: Arc<Slot>) -> Self {
        Self { stream, slot }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.stream.poll_read_ready(cx))?;
            let wanted = buf.remaining();
            let mut read = None;
            // Into the buffer's unfilled part as it is (`try_read` would
            // need it zeroed first, 8 KB on every read). A read shorter than
            // the room it had emptied the socket: the closure then answers
            // `WouldBlock`, which makes `try_io` forget the readiness, as
            // tokio's own `TcpStream` does, instead of a second `read` that
            // would only say `EAGAIN` (edge-triggered `epoll` reports data
            // that arrives later as a new event).
            let outcome = this.stream.try_io(Interest::READABLE, || {
                let n = this.stream.try_read_buf(buf)?;
                read = Some(n);
                if n > 0 && n < wanted {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            match (read, outcome) {
                (Some(n), _) => {
                    if n > 0 {
                        this.slot.mark_spoken();
                    }
                    return Poll::Ready(Ok(()));
                }
                (None, Err(error)) if error.kind() == io::ErrorKind::WouldBlock => {}
                (None, Err(error)) => return Poll::Ready(Err(error)),
                (None, Ok(())) => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl Watched {
    /// One write (`send`): after the connection's line, when the socket
    /// takes it. A write that finds the socket full marks the slot (the
    /// head timeout waits), and the next that goes through restarts its
    /// wait for a head.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        mut send: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        ready!(self.slot.poll_line_written(cx));
        loop {
            if self.stream.poll_write_ready(cx)?.is_pending() {
                self.slot.write_blocked();
                return Poll::Pending;
            }
            match send(&self.stream) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                done => {
                    if done.is_ok() {
                        self.slot.wrote();
                    }
                    return Poll::Ready(done);
                }
            }
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, |stream| stream.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_send(cx, |stream| stream.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // The close can be an answer's end (HTTP/1.0, a body of unknown
        // length): it waits for the line as the writes do.
        ready!(this.slot.poll_line_written(cx));
        Poll::Ready(
            socket2::SockRef::from(this.stream.as_ref()).shutdown(std::net::Shutdown::Write),
        )
    }
}

/// At most one accept-error line a second; the rest are counted.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    last: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    /// The minimum time between two lines.
    const EVERY: Duration = Duration::from_secs(1);

    /// Records an error at `now`; `Some(n)` when a line is due, `n` being
    /// how many were suppressed since the last one.
    pub fn record(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < Self::EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by the tests that set the head timeout's clock ([`NOW`]).
    static CLOCK: Mutex<()> = Mutex::new(());

    #[test]
    fn the_cap_is_derived_or_set() {
        assert_eq!(cap(None, Some(256)), Ok(96));
        assert_eq!(cap(None, Some(1024)), Ok(480));
        assert_eq!(cap(None, Some(10)), Ok(16));
        assert_eq!(cap(None, Some(u64::MAX)), Ok(1_000_000));
        assert_eq!(cap(None, None), Ok(4096));
        assert_eq!(cap(Some("8".into()), Some(256)), Ok(8));
        assert_eq!(cap(Some(" ".into()), Some(256)), Ok(96));
        for bad in ["0", "-1", "lots", "1000001"] {
            let error = cap(Some(bad.into()), None).unwrap_err();
            assert!(error.contains(MAX_CONNECTIONS_VAR), "{error}");
        }
    }

    #[test]
    fn idle_connections_are_shed_oldest_first_and_busy_ones_never() {
        let connections = Connections::new(8);
        let mut admitted: Vec<Admitted> =
            (0..7).map(|_| connections.admit(None).unwrap()).collect();
        assert_eq!(connections.open(), 7);
        // Spoken: the fourth has sent bytes, so the fifth (silent) goes first.
        admitted[3].slot().mark_spoken();
        // Busy: the first three have a request in flight.
        let busy: Vec<InFlight> = admitted[..3].iter().map(|a| a.slot().request()).collect();
        // At the high-water mark (7 of 8), each newcomer sheds the oldest idle one.
        assert_eq!(admitted[6].pace(), Duration::ZERO);
        let newcomer = connections.admit(None).unwrap();
        assert_eq!(connections.open(), 7);
        // Shedding paces the accepts: each connection lives MIN_LIFE.
        assert_eq!(newcomer.pace(), MIN_LIFE / 8);
        // The fifth was shed; the spoken fourth and the busy first were not.
        for (n, shed) in [(4, true), (3, false), (0, false)] {
            let serving = admitted[n]
                .slot()
                .serve(std::future::pending::<()>(), |_| {});
            assert_eq!(futures_now(serving).is_some(), shed, "connection {n}");
        }
        // Once only busy connections are left, the cap holds.
        let mut held = vec![newcomer.slot().request()];
        let mut extra = vec![newcomer];
        for _ in 0..20 {
            let Some(next) = connections.admit(None) else {
                break;
            };
            held.push(next.slot().request());
            extra.push(next);
        }
        assert_eq!(connections.open(), 8);
        assert!(connections.admit(None).is_none());
        drop((busy, held));
        admitted.clear();
        extra.clear();
        assert_eq!(connections.open(), 0);
    }

    /// A connection waiting for a head longer than HEAD_TIMEOUT is closed
    /// by the sweep, counted from its accept or from the end of its last
    /// request; one with a request in flight (or its line waiting) never.
    #[test]
    fn connections_waiting_too_long_for_a_head_are_closed() {
        let _clock = CLOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let connections = Connections::new(64);
        let limit = HEAD_TICKS;
        let admitted: Vec<Admitted> = (0..4).map(|_| connections.admit(None).unwrap()).collect();
        let since = admitted[0].slot().idle_since.load(Ordering::Relaxed);
        // The second ended a request later; the third has one in flight; the
        // fourth's request ended with its line still waiting to be written.
        admitted[1]
            .slot()
            .idle_since
            .store(since + 40, Ordering::Relaxed);
        let busy = admitted[2].slot().request();
        let ended = admitted[3].slot().request();
        admitted[3].slot().line_queued();
        drop(ended);
        let closed = |connections: &Connections, now: u32| {
            connections.close_overdue(now);
            admitted
                .iter()
                .map(|a| a.slot().shedding.load(Ordering::SeqCst))
                .collect::<Vec<_>>()
        };
        // Never before HEAD_TIMEOUT (plus the tick the clock may lag).
        assert_eq!(closed(&connections, since + limit + 1), [false; 4]);
        assert_eq!(connections.open(), 4);
        assert_eq!(
            closed(&connections, since + limit + 2),
            [true, false, false, false]
        );
        assert_eq!(connections.open(), 3);
        // Its task is told to close it.
        assert!(
            futures_now(
                admitted[0]
                    .slot()
                    .serve(std::future::pending::<()>(), |_| {})
            )
            .is_some()
        );
        assert_eq!(
            closed(&connections, since + 40 + limit + 2),
            [true, true, false, false]
        );
        assert_eq!(connections.open(), 2);
        // Once the request ends, its wait starts again from then; once the
        // line is written, the fourth is overdue.
        let now = since + 1000;
        NOW.store(now, Ordering::Relaxed);
        drop(busy);
        admitted[3].slot().line_written();
        assert_eq!(
            closed(&connections, now + limit + 1),
            [true, true, false, true]
        );
        assert_eq!(closed(&connections, now + limit + 2), [true; 4]);
        assert_eq!(connections.open(), 0);
    }

    #[test]
    fn accept_errors_are_rate_limited() {
        let mut errors = AcceptErrors::default();
        let start = Instant::now();
        assert_eq!(errors.record(start), Some(0));
        for n in 1..=50 {
            assert_eq!(errors.record(start + Duration::from_millis(n * 10)), None);
        }
        assert_eq!(errors.record(start + Duration::from_millis(1001)), Some(50));
    }

    /// A task already waiting when its connection is shed is woken, and its
    /// next poll ends the connection; a connection that ends by itself ends
    /// `serve` too.
    #[test]
    fn a_waiting_connection_is_woken_and_ended_when_shed() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let slot = Slot::default();
        let mut serving = std::pin::pin!(slot.serve(std::future::pending::<()>(), |_| {}));
        assert!(serving.as_mut().poll(&mut cx).is_pending());
        assert!(serving.as_mut().poll(&mut cx).is_pending());
        slot.raise_shed();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(serving.as_mut().poll(&mut cx).is_ready());
        assert_eq!(
            futures_now(Slot::default().serve(std::future::ready(()), |_| {})),
            Some(())
        );
    }

    /// Shutting down tells each connection once (it goes on to its end, as
    /// a request in flight does); a shed or timeout still ends it at once.
    #[test]
    fn a_drained_connection_is_told_once_and_runs_to_its_end() {
        let connections = Connections::new(8);
        let first = connections.admit(None).unwrap();
        let second = connections.admit(None).unwrap();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let done = AtomicBool::new(false);
        let drains = AtomicUsize::new(0);
        let connection = std::future::poll_fn(|_| {
            if done.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let mut serving = std::pin::pin!(first.slot().serve(connection, |_| {
            drains.fetch_add(1, Ordering::SeqCst);
        }));
        let mut other = std::pin::pin!(second.slot().serve(std::future::pending::<()>(), |_| {}));
        assert!(serving.as_mut().poll(&mut cx).is_pending());
        assert!(other.as_mut().poll(&mut cx).is_pending());
        connections.drain();
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "both tasks are woken");
        assert!(serving.as_mut().poll(&mut cx).is_pending());
        assert_eq!(drains.load(Ordering::SeqCst), 1);
        connections.drain();
        assert!(serving.as_mut().poll(&mut cx).is_pending());
        assert!(serving.as_mut().poll(&mut cx).is_pending());
        assert_eq!(drains.load(Ordering::SeqCst), 1, "told once");
        done.store(true, Ordering::SeqCst);
        assert!(serving.as_mut().poll(&mut cx).is_ready());
        // Draining, then shed: ends at once.
        assert!(other.as_mut().poll(&mut cx).is_pending());
        second.slot().raise_shed();
        assert!(other.as_mut().poll(&mut cx).is_ready());
    }

    /// While its line waits, a connection writes nothing and does not close
    /// (an HTTP/1.0 answer of unknown length ends with the close), and it
    /// is not idle (not shed); once written, it goes on and its task is
    /// woken.
    #[tokio::test]
    async fn a_connection_waits_for_its_line_before_writing_or_closing() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let slot = Arc::new(Slot::default());
        let mut watched = Watched::new(Arc::new(server), Arc::clone(&slot));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        assert!(slot.is_idle());
        slot.line_queued();
        assert!(!slot.is_idle(), "a connection whose line waits is not shed");
        let bufs = [io::IoSlice::new(b"a")];
        assert!(
            Pin::new(&mut watched)
                .poll_write(&mut cx, b"a")
                .is_pending()
        );
        assert!(
            Pin::new(&mut watched)
                .poll_write_vectored(&mut cx, &bufs)
                .is_pending()
        );
        assert!(Pin::new(&mut watched).poll_shutdown(&mut cx).is_pending());
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        slot.line_written();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task is woken");
        assert!(slot.is_idle());
        watched.write_all(b"ok").await.expect("write");
        watched.shutdown().await.expect("shutdown");
        let mut client = client;
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"ok");
    }

    /// The sweep's decision is not checked again after the connection's
    /// last poll: a head that arrived in the same pass as the sweep (the
    /// heartbeat ran first) is read, its request started (the service
    /// called, the handler polled once), and then the connection is dropped
    /// with the request in flight. hyper's timer was polled only after the
    /// parse found no head, so such a request was answered.
    #[test]
    fn a_request_started_on_the_poll_after_the_sweep_is_not_dropped() {
        let connections = Connections::new(8);
        let admitted = connections.admit(None).unwrap();
        let slot = Arc::clone(admitted.slot());
        let limit = HEAD_TICKS;
        let since = slot.idle_since.load(Ordering::Relaxed);
        connections.close_overdue(since + limit + 2);
        // hyper's next poll reads the head that just arrived and calls the service.
        let request = std::cell::RefCell::new(None);
        let connection = std::future::poll_fn(|_| {
            request.borrow_mut().get_or_insert_with(|| slot.request());
            Poll::<()>::Pending
        });
        let ended = futures_now(slot.serve(connection, |_| {})).is_some();
        assert!(
            !(ended && slot.in_flight.load(Ordering::SeqCst) == 1),
            "dropped with its request in flight"
        );
    }

    /// While an answer's bytes wait for a full socket (a slow reader after
    /// the body ended), the connection is not overdue; once a write goes
    /// through, its wait for a head starts from then.
    #[tokio::test]
    #[allow(clippy::await_holding_lock)]
    async fn a_connection_flushing_to_a_slow_reader_is_not_overdue() {
        use tokio::io::AsyncReadExt;
        let _clock = CLOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let connections = Connections::new(8);
        let admitted = connections.admit(None).unwrap();
        let slot = Arc::clone(admitted.slot());
        let mut watched = Watched::new(Arc::new(server), Arc::clone(&slot));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let chunk = vec![b'x'; 64 * 1024];
        let mut written = 0usize;
        while let Poll::Ready(n) = Pin::new(&mut watched).poll_write(&mut cx, &chunk) {
            written += n.expect("write");
            assert!(written < 1 << 30, "the socket never filled");
        }
        let limit = HEAD_TICKS;
        let since = slot.idle_since.load(Ordering::Relaxed);
        connections.close_overdue(since + 10 * limit);
        assert!(
            !slot.shedding.load(Ordering::SeqCst),
            "closed while flushing"
        );
        // The reader catches up; the next write goes through.
        let mut sink = vec![0u8; written];
        client.read_exact(&mut sink).await.expect("read");
        let later = since + 20 * limit;
        NOW.store(later, Ordering::Relaxed);
        let n = std::future::poll_fn(|cx| Pin::new(&mut watched).poll_write(cx, b"y"))
            .await
            .expect("write");
        assert_eq!(n, 1);
        connections.close_overdue(later + limit + 1);
        assert!(!slot.shedding.load(Ordering::SeqCst), "its wait restarted");
        connections.close_overdue(later + limit + 2);
        assert!(slot.shedding.load(Ordering::SeqCst), "then overdue");
    }

    /// A waker that counts its wake-ups.
    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls a future once.
    fn futures_now<F: std::future::Future>(future: F) -> Option<F::Output> {
        let mut future = std::pin::pin!(future);
        let waker = std::task::Waker::noop();
        match future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        }
    }
}
