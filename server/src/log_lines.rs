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

use crate::connections::Slot;
use std::cell::RefCell;
use std::io::Write as _;
use std::sync::Arc;
use std::task::{Poll, Waker};

/// Room kept for the next batch after a write; a larger buffer (a burst of
/// lines) is let go.
const KEEP: usize = 64 * 1024;

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
}

impl Queue {
    /// Writes the queued lines in one `write` and lets their connections go on.
    fn write_out(&mut self) {
        if !self.text.is_empty() {
            let _ = std::io::stderr().lock().write_all(&self.text);
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

/// Queues a request's line (without its line break) for the connection of
/// `slot`, or writes it at once when no writer runs on this thread.
pub fn push(line: String, slot: &Arc<Slot>) {
    let queued = QUEUE
        .try_with(|queue| {
            let Ok(mut queue) = queue.try_borrow_mut() else {
                return false;
            };
            let Some(writer) = queue.writer.as_ref() else {
                return false;
            };
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

/// Writes a line to stderr in one `write` (`eprintln!` makes two on
/// unbuffered stderr: the text, then the line break).
pub fn write_line(mut line: String) {
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
            let _ = QUEUE.try_with(|queue| {
                if let Ok(mut queue) = queue.try_borrow_mut() {
                    queue.writer = None;
                    queue.write_out();
                }
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
