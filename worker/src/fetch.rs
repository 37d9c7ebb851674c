//! The Worker's upstream: `worker::Fetch`, the runtime's own `fetch`.

use crate::translate::{self, JsBody};
use fal_proxy_core::{
    Cause, Config, KEY_SET_TIMEOUT, KeySetDocument, KeySetError, KeySetSource, MAX_KEY_SET_BYTES,
    Upstream, UpstreamError,
};
use futures_util::StreamExt as _;
use futures_util::future::{self, Either, select};
use futures_util::stream;
use http::header::CONTENT_LENGTH;
use std::cell::Cell;
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{AbortSignal, Delay, Fetch, js_sys, web_sys};

/// Sends one upstream request per call with the runtime's `fetch`: redirects
/// returned as they are (never followed), the request body streamed, a
/// deadline on the response head (never on the body), and the body limit
/// enforced while streaming when the browser sent no `content-length`.
#[derive(Debug)]
pub struct FetchUpstream {
    head_timeout: Duration,
    max_body_bytes: u64,
}

impl FetchUpstream {
    pub fn new(config: &Config) -> Self {
        Self {
            head_timeout: config.timeout(),
            max_body_bytes: config.max_body_bytes(),
        }
    }
}

impl Upstream<JsBody> for FetchUpstream {
    type Body = JsBody;

    async fn send(
        &self,
        request: http::Request<JsBody>,
    ) -> Result<http::Response<JsBody>, UpstreamError> {
        let (parts, body) = request.into_parts();
        // Cancels the upstream request: on the head deadline, or when a
        // streamed body fails.
        let controller = web_sys::AbortController::new().map_err(|_| UpstreamError::Broken)?;

        // The core has checked a declared length. A body without one
        // (chunked) is counted as it streams.
        let counted =
            match &body {
                Some(stream) if !parts.headers.contains_key(CONTENT_LENGTH) => Some(
                    CountedBody::new(stream, self.max_body_bytes, controller.clone()),
                ),
                _ => None,
            };
        let body = match &counted {
            Some(counted) => Some(counted.stream()),
            None => body,
        };

        // `web_sys::RequestInit` rather than `worker::RequestInit`, whose
        // `Method` cannot carry every method.
        let init = web_sys::RequestInit::new();
        init.set_method(parts.method.as_str());
        let headers = translate::headers_to_js(&parts.headers).ok_or(UpstreamError::Broken)?;
        init.set_headers(&headers);
        init.set_redirect(web_sys::RequestRedirect::Manual);
        if let Some(stream) = &body {
            init.set_body(stream);
        }
        let request = web_sys::Request::new_with_str_and_init(&parts.uri.to_string(), &init)
            .map_err(|_| UpstreamError::Broken)?;

        let signal = AbortSignal::from(controller.signal());
        let fetch = Fetch::Request(worker::Request::from(request));
        let sent = pin!(fetch.send_with_signal(&signal));
        let deadline = pin!(Delay::from(self.head_timeout));
        let sent = match select(sent, deadline).await {
            Either::Left((sent, _deadline)) => sent,
            Either::Right(((), sent)) => {
                controller.abort();
                // The aborted fetch settles at once; leave nothing pending.
                let _ = sent.await;
                return Err(UpstreamError::Timeout);
            }
        };
        match (sent, counted.and_then(|counted| counted.failure())) {
            (Ok(response), None) => {
                translate::response_from_js(&response).ok_or(UpstreamError::Broken)
            }
            (_, Some((failure, reader))) => {
                drain(&reader).await;
                Err(failure)
            }
            // workerd reports a refused connection, a DNS or TLS failure and a
            // reset alike: a rejected fetch with no response, told apart (as
            // far as it can be) by its message.
            (Err(error), None) => Err(UpstreamError::Unreachable(cause_of(&error))),
        }
    }
}

/// The cause class of a rejected fetch, from the words of its error and the
/// errors it was caused by (workerd has no error codes for these), or
/// `unknown`, which is what workerd's own messages mostly allow. Only the
/// class is logged, never the message, which may hold the URL.
fn cause_of(error: &worker::Error) -> Cause {
    let mut text = String::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        text.push_str(&error.to_string().to_ascii_lowercase());
        text.push('\n');
        current = error.source();
    }
    cause_of_message(&text)
}

fn cause_of_message(text: &str) -> Cause {
    let has = |words: &[&str]| words.iter().any(|word| text.contains(word));
    if has(&["dns", "lookup", "resolve", "no such host"]) {
        Cause::Dns
    } else if has(&["tls", "ssl", "certificate", "handshake"]) {
        Cause::Tls
    } else if has(&["refused", "unreachable", "connect()"]) {
        Cause::Connect
    } else if has(&["timed out", "timeout"]) {
        Cause::Timeout
    } else if has(&["reset"]) {
        Cause::Reset
    } else {
        // Measured with wrangler 4.86's workerd: a refused connection and a
        // failed TLS handshake both say "Network connection lost.", a failed
        // lookup "internal error; reference = ...": nothing to tell apart.
        Cause::Unknown
    }
}

/// The auth provider's key set, with the runtime's `fetch`: redirects not
/// followed, the whole exchange within [`KEY_SET_TIMEOUT`] (then aborted),
/// at most [`MAX_KEY_SET_BYTES`] read.
impl KeySetSource for FetchUpstream {
    async fn fetch_key_set(&self, url: &str) -> Result<KeySetDocument, KeySetError> {
        let controller = web_sys::AbortController::new().map_err(|_| KeySetError::Unreachable)?;
        let init = web_sys::RequestInit::new();
        init.set_method("GET");
        init.set_redirect(web_sys::RequestRedirect::Manual);
        let request = web_sys::Request::new_with_str_and_init(url, &init)
            .map_err(|_| KeySetError::Unreachable)?;
        let signal = AbortSignal::from(controller.signal());
        let fetch = async {
            let mut response = Fetch::Request(worker::Request::from(request))
                .send_with_signal(&signal)
                .await
                .map_err(|_| KeySetError::Unreachable)?;
            if response.status_code() != 200 {
                return Err(KeySetError::Status);
            }
            let header = |name: &str| response.headers().get(name).ok().flatten();
            if header("content-length")
                .and_then(|length| length.parse::<usize>().ok())
                .is_some_and(|length| length > MAX_KEY_SET_BYTES)
            {
                return Err(KeySetError::TooLarge);
            }
            let cache_control = header("cache-control");
            let mut body = Vec::new();
            let mut chunks = response.stream().map_err(|_| KeySetError::Unreachable)?;
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|_| KeySetError::Unreachable)?;
                if body.len() + chunk.len() > MAX_KEY_SET_BYTES {
                    return Err(KeySetError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(KeySetDocument {
                body: body.into(),
                cache_control,
            })
        };
        let fetch = pin!(fetch);
        let deadline = pin!(Delay::from(KEY_SET_TIMEOUT));
        match select(fetch, deadline).await {
            Either::Left((fetched, _deadline)) => fetched,
            Either::Right(((), _fetch)) => {
                controller.abort();
                Err(KeySetError::Timeout)
            }
        }
    }

    /// workerd cancels a request woken from another request's context.
    fn shares_fetches(&self) -> bool {
        false
    }
}

/// A request body of unknown length, counted as it is sent upstream.
///
/// Past the limit (or when the browser's body breaks off) the upstream
/// request is aborted and the stream sent upstream stalls until the abort
/// cancels it: it never ends early, which workerd would send as a complete,
/// truncated body, and never errors, which workerd reports as an uncaught
/// exception. The browser's body is then read to its end and dropped
/// ([`drain`]) before the error answer goes out, so the browser, still
/// uploading, receives that answer instead of a reset connection.
struct CountedBody {
    reader: web_sys::ReadableStreamDefaultReader,
    max_bytes: u64,
    upstream: web_sys::AbortController,
    failure: Rc<Cell<Option<UpstreamError>>>,
}

impl CountedBody {
    fn new(
        stream: &web_sys::ReadableStream,
        max_bytes: u64,
        upstream: web_sys::AbortController,
    ) -> Self {
        Self {
            // A fresh request body is never locked, so this does not throw.
            reader: stream.get_reader().unchecked_into(),
            max_bytes,
            upstream,
            failure: Rc::new(Cell::new(None)),
        }
    }

    /// The stream sent upstream. Its chunks stay JS values (only their
    /// lengths are read), so nothing is copied into wasm.
    fn stream(&self) -> web_sys::ReadableStream {
        let state = (
            self.reader.clone(),
            0_u64,
            self.max_bytes,
            self.upstream.clone(),
            Rc::clone(&self.failure),
        );
        let chunks = stream::unfold(
            state,
            |(reader, seen, max_bytes, upstream, failure)| async move {
                let (chunk, seen, error) = match read(&reader).await {
                    Read::Done => return None,
                    Read::Failed => (JsValue::UNDEFINED, seen, Some(UpstreamError::Broken)),
                    Read::Chunk(chunk, length) => {
                        let seen = seen.saturating_add(length);
                        let over = (seen > max_bytes).then_some(UpstreamError::BodyTooLarge);
                        (chunk, seen, over)
                    }
                };
                if let Some(error) = error {
                    failure.set(Some(error));
                    upstream.abort();
                    return future::pending().await;
                }
                Some((Ok(chunk), (reader, seen, max_bytes, upstream, failure)))
            },
        );
        wasm_streams::ReadableStream::from_stream(chunks).into_raw()
    }

    /// Why the body failed, if it did, and its reader for [`drain`].
    fn failure(self) -> Option<(UpstreamError, web_sys::ReadableStreamDefaultReader)> {
        self.failure.get().map(|failure| (failure, self.reader))
    }
}

enum Read {
    Chunk(JsValue, u64),
    Done,
    Failed,
}

async fn read(reader: &web_sys::ReadableStreamDefaultReader) -> Read {
    let Ok(result) = JsFuture::from(reader.read()).await else {
        return Read::Failed;
    };
    let field = |name: &str| js_sys::Reflect::get(&result, &JsValue::from_str(name));
    match field("done") {
        Ok(done) if !done.is_truthy() => {
            let chunk = field("value").unwrap_or(JsValue::UNDEFINED);
            let length = chunk
                .dyn_ref::<js_sys::Uint8Array>()
                .map_or(0, js_sys::Uint8Array::length);
            Read::Chunk(chunk, u64::from(length))
        }
        Ok(_) => Read::Done,
        Err(_) => Read::Failed,
    }
}

/// Reads the rest of the browser's body and drops it (the platform caps a
/// request body's size, so this ends).
async fn drain(reader: &web_sys::ReadableStreamDefaultReader) {
    while let Read::Chunk(..) = read(reader).await {}
}
