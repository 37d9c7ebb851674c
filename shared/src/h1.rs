//! HTTP/1.1 on the pool's connections to fal, as a client, written out
//! here instead of through hyper's client connections.
//!
//! hyper runs each client connection as a task of its own and hands the
//! request, the response and both bodies over through channels: every
//! proxied request then wakes and polls that task besides the browser
//! connection's, about 30% of the proxy's instructions per request. Here the
//! request's own future writes the request and reads the response head,
//! and the response body reads the rest straight from the connection.
//!
//! The client side of HTTP/1.1 is small, but getting the end of a response
//! wrong would hand one request's answer to the next on the connection, so
//! this is strict (RFC 9112): a connection goes back to the pool only after
//! a response whose end its framing said (a `content-length`, or a chunked
//! body to its last chunk and trailers), on HTTP/1.1 without `connection:
//! close`, with nothing read past that end, and after the request was
//! written whole. Anything it does not understand is an error and the
//! connection is closed.

use crate::body::BoxError;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use std::collections::VecDeque;
use std::error::Error;
use std::fmt;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The request body the pool sends.
pub(crate) type PoolBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// At most this many header fields in a response head (as hyper).
const MAX_HEADERS: usize = 100;

/// The largest response head read (as hyper's client).
const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// Read this much at a time at first, and at least.
const READ_SIZE: usize = 8192;

/// Read at most this much at a time (a long body's reads grow to it).
const MAX_READ_SIZE: usize = 256 * 1024;

/// At most this many bytes of chunk extensions and trailers in one body.
const MAX_CHUNK_EXTRA: usize = 16 * 1024;

/// Body pieces queued for one vectored write at most.
const MAX_QUEUED: usize = 16;

/// Why an exchange failed: what went wrong, and the I/O error or the
/// request body's error behind it (which the upstream's error
/// classification looks for in the source chain).
#[derive(Debug)]
pub struct WireError {
    what: &'static str,
    /// The request body (the browser's side) failed, or did not match its
    /// length: the exchange ends there, and is never tried again.
    request_body: bool,
    source: Option<BoxError>,
}

impl WireError {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            request_body: false,
            source: None,
        }
    }

    fn io(what: &'static str, error: io::Error) -> Self {
        Self {
            what,
            request_body: false,
            source: Some(Box::new(error)),
        }
    }

    fn body(error: BoxError) -> Self {
        Self {
            what: "request body failed",
            request_body: true,
            source: Some(error),
        }
    }

    fn body_length(what: &'static str) -> Self {
        Self {
            what,
            request_body: true,
            source: None,
        }
    }

    /// Whether the request body failed or did not match its length, rather
    /// than the connection: such a request is never sent again elsewhere.
    pub(crate) fn is_request_body(&self) -> bool {
        self.request_body
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream HTTP/1.1: {}", self.what)
    }
}

impl Error for WireError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source
            .as_deref()
            .map(|error| error as &(dyn Error + 'static))
    }
}

/// One connection: its stream, and what was read from it and not yet used.
#[derive(Debug)]
pub(crate) struct Conn<T> {
    io: T,
    read: BytesMut,
    /// How much the next read asks for: doubled after a read that filled
    /// the room, halved after one that used under a quarter (as hyper's
    /// adaptive reads), so a long body takes fewer system calls.
    read_size: usize,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Conn<T> {
    pub(crate) fn new(io: T) -> Self {
        Self {
            io,
            read: BytesMut::new(),
            read_size: READ_SIZE,
        }
    }

    /// Whether an idle connection can take a request: nothing has arrived
    /// on it since its last response (fal closing it, or anything else).
    /// Costs no system call while the socket has not become readable.
    pub(crate) fn is_open_and_quiet(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut asking = Context::from_waker(Waker::noop());
        Pin::new(&mut self.io)
            .poll_read(&mut asking, &mut buf)
            .is_pending()
    }

    /// Before the connection waits idle in the pool: a read buffer grown
    /// for a long body is let go (the next response starts small again),
    /// so an idle connection keeps at most [`READ_SIZE`] or so.
    pub(crate) fn shrink_while_idle(&mut self) {
        if self.read.capacity() > 2 * READ_SIZE && self.read.is_empty() {
            self.read = BytesMut::new();
        }
        self.read_size = READ_SIZE;
    }

    /// How much the read buffer holds room for.
    #[cfg(test)]
    pub(crate) fn read_capacity(&self) -> usize {
        self.read.capacity()
    }

    /// Reads more into `self.read`; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // `reserve` takes the buffer back whole when nothing else holds a
        // part of it any more (the response's fields, its body's pieces).
        let room = self.read.capacity() - self.read.len();
        if room < self.read_size / 2 {
            self.read.reserve(self.read_size);
        }
        let room = self.read.capacity() - self.read.len();
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.read
        ))?;
        if read >= room {
            self.read_size = (self.read_size * 2).min(MAX_READ_SIZE);
        } else if read < self.read_size / 4 {
            self.read_size = (self.read_size / 2).max(READ_SIZE);
        }
        Poll::Ready(Ok(read))
    }
}

/// How a request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Length(u64),
    Chunked,
}

/// A request on its way out: what is still to be written, and the body
/// still to be read from. It belongs to no connection until written, so a
/// request not yet written at all can go on another.
pub(crate) struct Upload {
    queue: VecDeque<Bytes>,
    body: PoolBody,
    encoding: Encoding,
    body_done: bool,
    /// Whether any byte has gone out.
    started: bool,
}

impl fmt::Debug for Upload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upload")
            .field("queued", &self.queue.len())
            .field("encoding", &self.encoding)
            .field("body_done", &self.body_done)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

/// The `content-length` fields seen, and the one length they all give.
#[derive(Debug, Default)]
struct Lengths {
    seen: bool,
    /// One was not a length, or two differed.
    invalid: bool,
    value: Option<u64>,
}

impl Lengths {
    /// One field; it may list the length several times, comma-separated.
    fn add(&mut self, field: &[u8]) {
        self.seen = true;
        if self.invalid {
            return;
        }
        for part in field.split(|&byte| byte == b',') {
            match parse_decimal(part.trim_ascii()) {
                Some(length) if self.value.is_none_or(|other| other == length) => {
                    self.value = Some(length);
                }
                _ => {
                    self.invalid = true;
                    return;
                }
            }
        }
    }

    /// The length, when the fields give exactly one.
    fn get(&self) -> Option<u64> {
        if self.invalid { None } else { self.value }
    }
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |total, &byte| {
        byte.is_ascii_digit()
            .then(|| total * 10 + u64::from(byte - b'0'))
    })
}

/// Whether a comma-separated field value names `token` (any case).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&byte| byte == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether the last of a comma-separated field value's items is `token`.
fn last_token_is(value: &[u8], token: &[u8]) -> bool {
    value
        .rsplit(|&byte| byte == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(token))
}

impl Upload {
    /// The request's head, written out (origin-form target, `host`), and
    /// its body's framing: the body's own `content-length` when it has a
    /// valid one, else its exact size, else chunked (`GET`, `HEAD` and
    /// `CONNECT` send no body then), as hyper's client frames it.
    pub(crate) fn new(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: PoolBody,
        host: &str,
    ) -> Self {
        // `Uri::path` is `/` when empty (`http://host?q` goes as `/?q`).
        let path = uri.path();
        let query = uri.query();
        // The fields go as they are but for `host` (written first, from the
        // origin), `transfer-encoding`, and a `content-length` that does not
        // give one valid length; the size of the rest, and the length.
        let mut lengths = Lengths::default();
        let (mut fields_size, mut lengths_size) = (0, 0);
        for (name, value) in headers {
            let line = name.as_str().len() + value.len() + 4;
            if name == CONTENT_LENGTH {
                lengths.add(value.as_bytes());
                lengths_size += line;
            } else if name != HOST && name != TRANSFER_ENCODING {
                fields_size += line;
            }
        }
        let declared = lengths.get();
        let mut digits = itoa::Buffer::new();
        let (encoding, framing): (Encoding, &[u8]) = if body.is_end_stream() {
            (Encoding::Length(0), b"")
        } else if let Some(length) = declared {
            (Encoding::Length(length), b"")
        } else if let Some(length) = body.size_hint().exact() {
            (Encoding::Length(length), digits.format(length).as_bytes())
        } else if matches!(*method, Method::GET | Method::HEAD | Method::CONNECT) {
            (Encoding::Length(0), b"")
        } else {
            (Encoding::Chunked, b"")
        };
        let framing_line: &[&[u8]] = match encoding {
            Encoding::Chunked => &[b"transfer-encoding: chunked\r\n"],
            Encoding::Length(_) if !framing.is_empty() => &[b"content-length: ", framing, b"\r\n"],
            Encoding::Length(_) => &[],
        };
        let keep_lengths = declared.is_some();
        // Sized exactly: a `Vec` whose length is its capacity becomes
        // `Bytes` without another allocation.
        let size = method.as_str().len()
            + 1
            + path.len()
            + query.map_or(0, |query| query.len() + 1)
            + " HTTP/1.1\r\nhost: \r\n".len()
            + host.len()
            + fields_size
            + if keep_lengths { lengths_size } else { 0 }
            + framing_line.iter().map(|part| part.len()).sum::<usize>()
            + 2;
        let mut head = Vec::with_capacity(size);
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(path.as_bytes());
        if let Some(query) = query {
            head.push(b'?');
            head.extend_from_slice(query.as_bytes());
        }
        head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        head.extend_from_slice(host.as_bytes());
        head.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            if name == HOST
                || name == TRANSFER_ENCODING
                || (name == CONTENT_LENGTH && !keep_lengths)
            {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        for part in framing_line {
            head.extend_from_slice(part);
        }
        head.extend_from_slice(b"\r\n");
        debug_assert_eq!(head.len(), size);
        let mut queue = VecDeque::with_capacity(4);
        queue.push_back(Bytes::from(head));
        Self {
            queue,
            body,
            encoding,
            body_done: encoding == Encoding::Length(0),
            started: false,
        }
    }

    /// Whether no byte of the request has been written yet.
    pub(crate) fn is_unstarted(&self) -> bool {
        !self.started
    }

    /// Writes what it can: the head, then the body as it comes, in as few
    /// writes as it arrives in. `Ready(Ok)` once all is written and flushed.
    fn poll_write<T: AsyncWrite + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WireError>> {
        loop {
            if !self.body_done
                && self.queue.len() < MAX_QUEUED
                && let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx)
            {
                self.take(frame)?;
                continue;
            }
            if self.queue.is_empty() {
                if !self.body_done {
                    return Poll::Pending;
                }
                ready!(Pin::new(&mut *io).poll_flush(cx))
                    .map_err(|error| WireError::io("writing the request failed", error))?;
                return Poll::Ready(Ok(()));
            }
            let mut slices = [IoSlice::new(&[]); MAX_QUEUED];
            let count = self.queue.len().min(MAX_QUEUED);
            for (slice, bytes) in slices.iter_mut().zip(&self.queue) {
                *slice = IoSlice::new(bytes);
            }
            let written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))
                .map_err(|error| WireError::io("writing the request failed", error))?;
            if written == 0 {
                return Poll::Ready(Err(WireError::io(
                    "writing the request failed",
                    io::ErrorKind::WriteZero.into(),
                )));
            }
            self.started = true;
            self.advance(written);
        }
    }

    fn advance(&mut self, mut written: usize) {
        while written > 0 {
            let Some(front) = self.queue.front_mut() else {
                return;
            };
            if written < front.len() {
                front.advance(written);
                return;
            }
            written -= front.len();
            self.queue.pop_front();
        }
    }

    /// Queues one frame of the body (trailers are not sent).
    fn take(&mut self, frame: Option<Result<Frame<Bytes>, BoxError>>) -> Result<(), WireError> {
        match frame {
            None => {
                self.body_done = true;
                match self.encoding {
                    Encoding::Length(0) => Ok(()),
                    Encoding::Length(_) => Err(WireError::body_length(
                        "the request body ended before its content-length",
                    )),
                    Encoding::Chunked => {
                        self.queue.push_back(Bytes::from_static(b"0\r\n\r\n"));
                        Ok(())
                    }
                }
            }
            Some(Err(error)) => Err(WireError::body(error)),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    return Ok(());
                };
                if data.is_empty() {
                    return Ok(());
                }
                match &mut self.encoding {
                    Encoding::Length(left) => {
                        let length = data.len() as u64;
                        if length > *left {
                            return Err(WireError::body_length(
                                "the request body is longer than its content-length",
                            ));
                        }
                        *left -= length;
                        self.queue.push_back(data);
                    }
                    Encoding::Chunked => {
                        self.queue
                            .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                        self.queue.push_back(data);
                        self.queue.push_back(Bytes::from_static(b"\r\n"));
                    }
                }
                Ok(())
            }
        }
    }
}

/// A response head, and how its body is framed.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) response: Response<()>,
    pub(crate) framing: Framing,
    /// Whether the connection may carry another request once this
    /// response has been read to its end (HTTP/1.1, no `connection:
    /// close`, no length beside a transfer coding), if its framing allows:
    /// a body read to the close does not.
    pub(crate) persistent: bool,
}

impl Head {
    /// Whether the connection may carry another request once this response
    /// has been read to its end; `no_body` when it has none whatever its
    /// headers say (see [`has_no_body`]).
    pub(crate) fn keep_alive(&self, no_body: bool) -> bool {
        self.persistent && (no_body || self.framing != Framing::Close)
    }
}

/// Where a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// This many bytes.
    Length(u64),
    /// Chunks, to the last one and its trailers.
    Chunked,
    /// Where the connection closes.
    Close,
}

/// Sends `upload` on `conn` and reads the response head (skipping interim
/// `1xx` ones). `upload` is left `None` once written whole; when fal
/// answers first, the rest is still there. A failed write is kept in
/// `write_failed` (and writing stops) while what fal said is read: it is
/// the error if fal said nothing.
pub(crate) fn poll_exchange<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<T>,
    upload: &mut Option<Upload>,
    write_failed: &mut Option<WireError>,
    cx: &mut Context<'_>,
) -> Poll<Result<Head, WireError>> {
    if let (Some(sending), None) = (upload.as_mut(), write_failed.as_ref()) {
        match sending.poll_write(&mut conn.io, cx) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) => *upload = None,
            Poll::Ready(Err(error)) if error.is_request_body() => {
                return Poll::Ready(Err(error));
            }
            Poll::Ready(Err(error)) => {
                // fal may have answered and closed: read what it said. The
                // upload stays, to tell whether any of it went out.
                *write_failed = Some(error);
            }
        }
    }
    loop {
        match parse_head(&mut conn.read) {
            Err(what) => return Poll::Ready(Err(WireError::new(what))),
            Ok(Some(head)) => return Poll::Ready(Ok(head)),
            Ok(None) => {}
        }
        let read = match ready!(conn.poll_fill(cx)) {
            Ok(read) => read,
            Err(error) => {
                return Poll::Ready(Err(write_failed
                    .take()
                    .unwrap_or_else(|| WireError::io("reading the response failed", error))));
            }
        };
        if read == 0 {
            return Poll::Ready(Err(write_failed.take().unwrap_or_else(|| {
                WireError::new("the connection closed before the response head")
            })));
        }
    }
}

/// Parses a response head from the front of `read`, taking it out;
/// `Ok(None)` when more is needed. Interim (`1xx`) responses are dropped.
fn parse_head(read: &mut BytesMut) -> Result<Option<Head>, &'static str> {
    loop {
        if read.is_empty() {
            return Ok(None);
        }
        let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            read,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => {
                if read.len() > MAX_HEAD_BYTES {
                    return Err("the response head is too large");
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => return Err("too many response headers"),
            Err(_) => return Err("the response head is malformed"),
        };
        let code = parsed.code.ok_or("the response head is malformed")?;
        if (100..200).contains(&code) {
            if code == 101 {
                return Err("an unexpected protocol switch");
            }
            read.advance(length);
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| "the response status is invalid")?;
        let http11 = parsed.version == Some(1);
        // Where each field's name and value are, for after the head is
        // split off the buffer (httparse's slices borrow the buffer).
        let mut places = [[0u32; 4]; MAX_HEADERS];
        let base = read.as_ptr() as usize;
        let offset = |part: &[u8]| (part.as_ptr() as usize).wrapping_sub(base);
        // The fields that frame the body, noted on the way.
        let mut lengths = Lengths::default();
        let (mut coded, mut chunked, mut close) = (false, false, false);
        let count = parsed.headers.len();
        for (field, place) in parsed.headers.iter().zip(&mut places) {
            let (name, value) = (field.name.as_bytes(), field.value);
            // Fields that only framed this connection never cross the proxy
            // (the core drops them too): they are read here and not put in
            // the map. A `connection` naming other fields stays, for the
            // core to drop those.
            let mut only_this_hop = false;
            if name.eq_ignore_ascii_case(b"content-length") {
                lengths.add(value);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // Only the last coding of the last field counts.
                coded = true;
                chunked = last_token_is(value, b"chunked");
                only_this_hop = true;
            } else if name.eq_ignore_ascii_case(b"connection") {
                close |= has_token(value, b"close");
                // Only `keep-alive`, which the core does not look for: a
                // `close` names a field `close` too, for the core to drop.
                only_this_hop = value
                    .split(|&byte| byte == b',')
                    .all(|token| token.trim_ascii().eq_ignore_ascii_case(b"keep-alive"));
            } else if name.eq_ignore_ascii_case(b"keep-alive") {
                only_this_hop = true;
            }
            if only_this_hop {
                // Marked by an empty name: no field has one.
                *place = [0; 4];
                continue;
            }
            // An empty value is taken as empty wherever its slice points.
            let name_at = offset(name);
            let value_at = if value.is_empty() { 0 } else { offset(value) };
            let within =
                |at: usize, len: usize| at.checked_add(len).is_some_and(|end| end <= length);
            if !within(name_at, name.len()) || !within(value_at, value.len()) {
                return Err("the response head is malformed");
            }
            // Within `length`, which is within MAX_HEAD_BYTES.
            *place = [
                name_at as u32,
                (name_at + name.len()) as u32,
                value_at as u32,
                (value_at + value.len()) as u32,
            ];
        }
        // The head shares the buffer (no copy); the buffer is whole again
        // for the next read once the response's fields are dropped.
        let head = read.split_to(length).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        for &[name_start, name_end, value_start, value_end] in &places[..count] {
            if name_start == name_end {
                continue;
            }
            let name = HeaderName::from_bytes(&head[name_start as usize..name_end as usize])
                .map_err(|_| "a response header name is invalid")?;
            let value = if value_start == value_end {
                HeaderValue::from_static("")
            } else {
                HeaderValue::from_maybe_shared(head.slice(value_start as usize..value_end as usize))
                    .map_err(|_| "a response header value is invalid")?
            };
            headers.append(name, value);
        }
        // RFC 9112 6.3.
        let mut persistent = http11 && !close;
        let framing = if coded {
            if !http11 {
                return Err("transfer-encoding on an HTTP/1.0 response");
            }
            if lengths.seen {
                // The transfer coding frames the body: a length beside it
                // is wrong, goes, and the connection is not trusted after.
                headers.remove(CONTENT_LENGTH);
                persistent = false;
            }
            if chunked {
                Framing::Chunked
            } else {
                Framing::Close
            }
        } else if lengths.seen {
            Framing::Length(
                lengths
                    .get()
                    .ok_or("the response content-length is invalid")?,
            )
        } else {
            Framing::Close
        };
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = if http11 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        *response.headers_mut() = headers;
        return Ok(Some(Head {
            response,
            framing,
            persistent,
        }));
    }
}

/// Whether a response to `method` with `status` has no body whatever its
/// headers say.
pub(crate) fn has_no_body(head_request: bool, status: StatusCode) -> bool {
    head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

/// Reads a response body from its connection.
#[derive(Debug)]
pub(crate) struct Decoder {
    state: State,
    /// Chunk extension and trailer bytes seen so far.
    extra: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Close,
    /// In a chunk size line: the size so far and the number of digits.
    Size(u64, u8),
    /// Spaces or tabs after the size.
    SizeSpace(u64),
    /// A chunk extension, up to the line's end.
    Extension(u64),
    /// The line feed ending a size line.
    SizeLf(u64),
    /// Chunk data still to come.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// In a trailer line.
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// What the decoder made of the buffered bytes.
#[derive(Debug)]
pub(crate) enum Decoded {
    Data(Bytes),
    /// Needs more bytes from the connection.
    More,
    Done,
}

impl Decoder {
    pub(crate) fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Length(0) => State::Done,
            Framing::Length(length) => State::Length(length),
            Framing::Chunked => State::Size(0, 0),
            Framing::Close => State::Close,
        };
        Self { state, extra: 0 }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The bytes still to come, when known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(left) => Some(left),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Whether the body ends where the connection closes.
    pub(crate) fn ends_at_close(&self) -> bool {
        self.state == State::Close
    }

    /// Takes the next piece of body out of `read`.
    pub(crate) fn decode(&mut self, read: &mut BytesMut) -> Result<Decoded, &'static str> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::Done),
                State::Length(left) => {
                    if read.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let (data, left) = split_up_to(read, left);
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::Close => {
                    if read.is_empty() {
                        return Ok(Decoded::More);
                    }
                    return Ok(Decoded::Data(read.split().freeze()));
                }
                State::Data(left) => {
                    if read.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let (data, left) = split_up_to(read, left);
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                _ => {
                    let Some(&byte) = read.first() else {
                        return Ok(Decoded::More);
                    };
                    read.advance(1);
                    self.state = self.step(byte)?;
                }
            }
        }
    }

    /// One byte of chunk framing.
    fn step(&mut self, byte: u8) -> Result<State, &'static str> {
        const BAD: &str = "the response's chunked framing is invalid";
        Ok(match (self.state, byte) {
            (State::Size(size, digits), _) if byte.is_ascii_hexdigit() => {
                if digits >= 16 {
                    return Err(BAD);
                }
                let digit = char::from(byte).to_digit(16).ok_or(BAD)?;
                State::Size(size * 16 + u64::from(digit), digits + 1)
            }
            (State::Size(_, 0), _) => return Err(BAD),
            (State::Size(size, _) | State::SizeSpace(size), b' ' | b'\t') => State::SizeSpace(size),
            (State::Size(size, _) | State::SizeSpace(size), b';') => {
                self.count_extra()?;
                State::Extension(size)
            }
            (State::Size(size, _) | State::SizeSpace(size) | State::Extension(size), b'\r') => {
                State::SizeLf(size)
            }
            // A bare line feed inside an extension is not a line end.
            (State::Extension(_), b'\n') => return Err(BAD),
            (State::Extension(size), _) => {
                self.count_extra()?;
                State::Extension(size)
            }
            (State::SizeLf(0), b'\n') => State::TrailerStart,
            (State::SizeLf(size), b'\n') => State::Data(size),
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size(0, 0),
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::EndLf, b'\n') => State::Done,
            (State::Trailer, b'\r') => State::TrailerLf,
            (State::TrailerStart | State::Trailer, b'\n') => return Err(BAD),
            (State::TrailerStart | State::Trailer, _) => {
                self.count_extra()?;
                State::Trailer
            }
            (State::TrailerLf, b'\n') => State::TrailerStart,
            _ => return Err(BAD),
        })
    }

    fn count_extra(&mut self) -> Result<(), &'static str> {
        self.extra += 1;
        if self.extra > MAX_CHUNK_EXTRA {
            return Err("the response's chunk extensions or trailers are too large");
        }
        Ok(())
    }
}

/// Up to `left` bytes off the front of `read` (which has some), and how
/// many are left after them.
fn split_up_to(read: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let take = usize::try_from(left).unwrap_or(usize::MAX).min(read.len());
    (read.split_to(take).freeze(), left - take as u64)
}

/// Reads the next piece of a response body: data, `None` at its end.
pub(crate) fn poll_body<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<T>,
    decoder: &mut Decoder,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Bytes, WireError>>> {
    loop {
        match decoder.decode(&mut conn.read) {
            Err(what) => return Poll::Ready(Some(Err(WireError::new(what)))),
            Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
            Ok(Decoded::Done) => return Poll::Ready(None),
            Ok(Decoded::More) => {}
        }
        match ready!(conn.poll_fill(cx)) {
            Err(error) => {
                return Poll::Ready(Some(Err(WireError::io(
                    "reading the response body failed",
                    error,
                ))));
            }
            Ok(0) if decoder.ends_at_close() => {
                decoder.state = State::Done;
                return Poll::Ready(None);
            }
            Ok(0) => {
                return Poll::Ready(Some(Err(WireError::io(
                    "the connection closed before the response body ended",
                    io::ErrorKind::UnexpectedEof.into(),
                ))));
            }
            Ok(_) => {}
        }
    }
}

/// Keeps writing an upload whose response came first.
pub(crate) fn poll_upload<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<T>,
    upload: &mut Upload,
    cx: &mut Context<'_>,
) -> Poll<Result<(), WireError>> {
    upload.poll_write(&mut conn.io, cx)
}

/// Whether the connection read nothing past the response's end.
pub(crate) fn read_nothing_more<T>(conn: &Conn<T>) -> bool {
    conn.read.is_empty()
}
