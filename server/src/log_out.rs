//! The server's stderr, with the per-request lines written in batches.
//!
//! A request's log line goes into a buffer, not straight to stderr: the
//! buffer is written when the next line would take it past [`PIPE_BUF`]
//! bytes, and otherwise [`FLUSH_AFTER`] after its first line (by
//! [`flusher`]). Under load that is one `write` for a few dozen requests
//! instead of one each; an idle server's line still appears within a few
//! milliseconds. Every write is whole lines of at most [`PIPE_BUF`] bytes
//! (a longer line alone), so lines from several processes sharing one pipe
//! never interleave. The server's own lines ([`write_now`]) go out at once,
//! after whatever is buffered, so the order of lines is kept; the buffer is
//! also written at shutdown ([`flush`]). A line is lost only if the process
//! is killed outright within [`FLUSH_AFTER`] of it.

use std::io::Write as _;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// The most bytes one write carries (POSIX: writes up to this size to a
/// pipe are never interleaved with other writers').
pub(crate) const PIPE_BUF: usize = 4096;

/// How long a line may wait in the buffer.
pub(crate) const FLUSH_AFTER: Duration = Duration::from_millis(5);

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static PENDING: Notify = Notify::const_new();

fn buffer() -> MutexGuard<'static, Vec<u8>> {
    // A panic while holding the lock leaves whole lines only: keep going.
    BUFFER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Queues one request's line (without its line break).
pub(crate) fn push(line: &str) {
    if queue(&mut buffer(), line, write_stderr) {
        PENDING.notify_one();
    }
}

/// Appends `line` and a line break to `buffer`, first handing `write` what
/// is there if the line would take it past [`PIPE_BUF`]. True when the
/// buffer was empty (the flusher is to be woken).
fn queue(buffer: &mut Vec<u8>, line: &str, mut write: impl FnMut(&[u8])) -> bool {
    if !buffer.is_empty() && buffer.len() + line.len() + 1 > PIPE_BUF {
        write(buffer);
        buffer.clear();
    }
    let was_empty = buffer.is_empty();
    buffer.reserve(PIPE_BUF.max(line.len() + 1));
    buffer.extend_from_slice(line.as_bytes());
    buffer.push(b'\n');
    was_empty
}

fn write_stderr(bytes: &[u8]) {
    let _ = std::io::stderr().lock().write_all(bytes);
}

/// Writes one line at once (without its line break), after what is queued.
pub(crate) fn write_now(line: &str) {
    let mut buffer = buffer();
    write_out(&mut buffer);
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    write_stderr(text.as_bytes());
}

/// Writes what is queued.
pub(crate) fn flush() {
    write_out(&mut buffer());
}

fn write_out(buffer: &mut Vec<u8>) {
    if !buffer.is_empty() {
        write_stderr(buffer);
        buffer.clear();
    }
}

/// Writes the queue [`FLUSH_AFTER`] after its first line, for ever.
pub(crate) async fn flusher() {
    loop {
        PENDING.notified().await;
        tokio::time::sleep(FLUSH_AFTER).await;
        flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_whole_lines_within_pipe_buf() {
        let mut buffer = Vec::new();
        let mut writes: Vec<Vec<u8>> = Vec::new();
        let mut wakes = 0;
        let line = "x".repeat(99);
        for _ in 0..100 {
            if queue(&mut buffer, &line, |bytes| writes.push(bytes.to_vec())) {
                wakes += 1;
            }
        }
        // 40 lines of 100 bytes fill a write; the rest waits for the flusher.
        assert_eq!(writes.len(), 2);
        assert_eq!(wakes, 3);
        assert_eq!(buffer.len(), 20 * 100);
        for write in &writes {
            assert_eq!(write.len(), 40 * 100);
            assert!(
                write
                    .split(|&b| b == b'\n')
                    .all(|l| l.is_empty() || l == line.as_bytes())
            );
        }
    }

    #[test]
    fn a_line_longer_than_pipe_buf_goes_alone() {
        let mut buffer = Vec::new();
        let mut writes: Vec<Vec<u8>> = Vec::new();
        let long = "y".repeat(PIPE_BUF + 10);
        queue(&mut buffer, "short", |bytes| writes.push(bytes.to_vec()));
        queue(&mut buffer, &long, |bytes| writes.push(bytes.to_vec()));
        queue(&mut buffer, "after", |bytes| writes.push(bytes.to_vec()));
        assert_eq!(
            writes,
            vec![b"short\n".to_vec(), format!("{long}\n").into_bytes()]
        );
        assert_eq!(buffer, b"after\n");
    }
}
