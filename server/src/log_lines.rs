//! The per-request log lines, written to stderr in batches.
//!
//! Each line used to be one `write` of its own. When stderr is a pipe (a
//! log collector, a terminal, the bench's reader), each of those wakes the
//! reader: under load that wake-up cost more kernel time than anything
//! else the request did (see the README, "Benchmark"). Here a finished
//! request's line is queued, and a writer task writes every queued line in
//! one `write` once the tasks already due have run, so the lines of all the
//! requests that finished in one pass of the scheduler go out together.
//!
//! The line still comes first: while a connection's line is queued, that
//! connection writes nothing to its socket (its slot says so, see
//! `connections::Watched`), so whoever reads the log after an answer
//! arrived finds the answer's line there, as with a `write` per line. The
//! answer waits for one pass of the scheduler. Lines keep their order.
//! Without a writer on this thread (before it starts, after it stops, on
//! another thread), a line is written at once.
//!
//! Only under load: while no two lines come between two times the runtime
//! waits for events (one request at a time, say), each line is written at
//! once, as before, and nothing waits; once two do, lines are queued, until
//! a batch holds a single line again (then lines are written at once until
//! the runtime next waits). Queuing would cost the answer's task a second
//! poll for nothing when there is no other line to share the `write` with.
//! After a burst, queuing stays on until the next batch, so the first
//! request after it pays that poll once.

use crate::connections::Slot;
use std::cell::RefCell;
use std::io::Write as _;
use std::sync::Arc;
use std::task::{Poll, Waker};

/// Room kept for the next batch after a write; a larger buffer (a burst of
/// lines) is let go.
const KEEP: usize = 64 * 1024;

/// The most a pipe takes in one piece, whole or not at all (POSIX: at least
/// 512 bytes; Linux: 4096).
const PIPE_BUF: usize = 4096;

thread_local! {
    static QUEUE: RefCell<Queue> = RefCell::new(Queue::default());
}

#[derive(Default)]
struct Queue {
    /// The queued lines, each with its line break.
    text: Vec<u8>,
    /// The connections whose lines are queued.
    slots: Vec<Arc<Slot>>,
    /// The writer task, while it runs.
    writer: Option<Waker>,
    /// Whether lines are queued (under load) or written at once.
    queuing: bool,
    /// Lines written at once since the runtime last waited for events.
    since_park: u32,
    /// A batch held a single line since the runtime last waited for
    /// events: lines are written at once until it does.
    held_off: bool,
}

impl Queue {
    /// Writes the queued lines and lets their connections go on; a batch of
    /// at most one line ends queuing.
    fn write_out(&mut self) {
        if self.slots.len() <= 1 {
            self.queuing = false;
            self.held_off |= self.slots.len() == 1;
        }
        if !self.text.is_empty() {
            let mut stderr = std::io::stderr().lock();
            for piece in pieces(&self.text) {
                let _ = stderr.write_all(piece);
            }
            drop(stderr);
            self.text.clear();
            if self.text.capacity() > KEEP {
                self.text = Vec::new();
            }
        }
        for slot in self.slots.drain(..) {
            slot.line_written();
        }
    }
}

/// `text` (whole lines) in pieces of at most [`PIPE_BUF`] bytes, each ending
/// at a line break (a longer line alone): a pipe takes each whole, so
/// another writer on it cannot tear a line, and a write that fails (a full
/// non-blocking pipe) loses only its own lines, as one `write` a line did.
fn pieces(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = if rest.len() <= PIPE_BUF {
            rest.len()
        } else {
            rest[..PIPE_BUF]
                .iter()
                .rposition(|&byte| byte == b'\n')
                .or_else(|| rest.iter().position(|&byte| byte == b'\n'))
                .map_or(rest.len(), |at| at + 1)
        };
        let (piece, after) = rest.split_at(cut);
        rest = after;
        Some(piece)
    })
}

/// Runs `f` on this thread's queue; `None` when it cannot be had (the
/// thread ending, or the queue already in use further up the stack).
fn with_queue<R>(f: impl FnOnce(&mut Queue) -> R) -> Option<R> {
    QUEUE
        .try_with(|queue| queue.try_borrow_mut().ok().map(|mut queue| f(&mut queue)))
        .ok()
        .flatten()
}

/// Writes what is queued now (before a line of the server's own, so the
/// lines stay in the order they were made).
pub fn flush() {
    with_queue(|queue| {
        if !queue.text.is_empty() {
            queue.write_out();
        }
    });
}

/// Queues a request's line (without its line break) for the connection of
/// `slot`, or writes it at once when not under load or when no writer runs
/// on this thread.
pub fn push(line: String, slot: &Arc<Slot>) {
    let queued = with_queue(|queue| {
        let Some(writer) = queue.writer.as_ref() else {
            return false;
        };
        if !queue.queuing {
            queue.since_park += 1;
            // The second line of one pass: the next ones are queued.
            queue.queuing = !queue.held_off && queue.since_park >= 2;
            return false;
        }
        if queue.text.is_empty() {
            writer.wake_by_ref();
        }
        queue.text.extend_from_slice(line.as_bytes());
        queue.text.push(b'\n');
        slot.line_queued();
        queue.slots.push(Arc::clone(slot));
        true
    })
    .unwrap_or(false);
    if !queued {
        write_line(line);
    }
}

/// The runtime is about to wait for events (its `on_thread_park` hook):
/// a new pass begins.
pub fn parked() {
    with_queue(|queue| {
        queue.since_park = 0;
        queue.held_off = false;
    });
}

/// Writes a line to stderr in one `write` (`eprintln!` makes two on
/// unbuffered stderr: the text, then the line break).
fn write_line(mut line: String) {
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The writer: runs for as long as the server, on its thread, and writes
/// what was queued each time it is woken. When it stops (the runtime
/// shutting down), it writes what is left, and later lines go out at once.
pub async fn writer() {
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            with_queue(|queue| {
                queue.writer = None;
                queue.write_out();
            });
        }
    }
    let _stop = Stop;
    std::future::poll_fn(|cx| {
        QUEUE.with(|queue| {
            let mut queue = queue.borrow_mut();
            if !queue
                .writer
                .as_ref()
                .is_some_and(|writer| writer.will_wake(cx.waker()))
            {
                queue.writer = Some(cx.waker().clone());
            }
            queue.write_out();
        });
        Poll::<()>::Pending
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines that come one at a time while the runtime never parks (it
    /// only checks for events between them) are not each queued alone: a
    /// batch of one line holds queuing off until the runtime next parks.
    #[test]
    fn a_batch_of_one_line_holds_queuing_off_until_the_runtime_parks() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(parked)
            .build()
            .expect("runtime");
        let queued_alone = runtime.block_on(async {
            tokio::spawn(writer());
            tokio::task::yield_now().await;
            let task = tokio::spawn(async {
                let mut queued_alone = 0;
                for n in 0..30 {
                    let slot = Arc::new(Slot::default());
                    push(format!("test: line {n}"), &slot);
                    let queued = QUEUE.with(|queue| queue.borrow().slots.len());
                    // Deferred: the runtime checks for events, never parks.
                    tokio::task::yield_now().await;
                    if queued == 1 {
                        queued_alone += 1;
                    }
                }
                queued_alone
            });
            task.await.expect("task")
        });
        assert!(queued_alone <= 1, "{queued_alone} of 30 lines queued alone");
    }

    /// Pieces hold whole lines, at most `PIPE_BUF` bytes unless one line is
    /// longer, and give back the text as it was.
    #[test]
    fn pieces_are_whole_lines_of_at_most_pipe_buf() {
        let line = |n: usize, len: usize| {
            let mut text = format!("fal-proxy: line={n} ");
            text.extend(std::iter::repeat_n('x', len.saturating_sub(text.len() + 1)));
            text.push('\n');
            text
        };
        let mut text = String::new();
        for n in 0..300 {
            text.push_str(&line(n, 40 + (n * 37) % 300));
        }
        text.push_str(&line(300, 9_000));
        text.push_str(&line(301, 100));
        let pieces: Vec<&[u8]> = pieces(text.as_bytes()).collect();
        assert!(pieces.len() > 1);
        assert_eq!(pieces.concat(), text.as_bytes());
        for piece in &pieces {
            assert!(piece.ends_with(b"\n"));
            let lines = piece.iter().filter(|&&byte| byte == b'\n').count();
            assert!(
                piece.len() <= PIPE_BUF || lines == 1,
                "{} bytes",
                piece.len()
            );
        }
        assert!(pieces.iter().any(|piece| piece.len() > PIPE_BUF));
        assert_eq!(super::pieces(b"").count(), 0);
        assert_eq!(super::pieces(b"one\n").collect::<Vec<_>>(), [b"one\n"]);
    }
}
