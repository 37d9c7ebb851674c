//! Bodies for targets built on `http-body` (native server, Vercel, Lambda).

use crate::forward::{Exchange, ProxyBody};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{LengthLimitError, Limited};
use std::error::Error;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// The error type of the bodies here.
pub type BoxError = Box<dyn Error + Send + Sync>;

impl<B> Body for ProxyBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ProxyBody::Full(bytes) if bytes.is_empty() => Poll::Ready(None),
            ProxyBody::Full(bytes) => Poll::Ready(Some(Ok(Frame::data(std::mem::take(bytes))))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(body) => body.is_end_stream(),
            ProxyBody::Full(bytes) => bytes.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(body) => body.size_hint(),
            ProxyBody::Full(bytes) => SizeHint::with_exact(bytes.len() as u64),
        }
    }
}

/// A response body on its way to the browser: counted, and the request's
/// one log line (rendered in the configured format, ready to print as it
/// is) handed to a sink when the body is finished or dropped (the browser
/// went away). The sink is the target's: stderr, a platform logger.
pub struct LoggedBody<B> {
    inner: ProxyBody<B>,
    exchange: Option<Exchange>,
    status: StatusCode,
    started: Instant,
    bytes: u64,
    end_on_error: bool,
    broken: bool,
    sink: Option<Box<dyn FnOnce(String) + Send + Sync>>,
}

impl<B> std::fmt::Debug for LoggedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggedBody")
            .field("status", &self.status)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl<B> LoggedBody<B> {
    /// Wraps the proxy's response; the line comes from the [`Exchange`] in
    /// its extensions (a response without one logs nothing).
    pub fn wrap(
        response: Response<ProxyBody<B>>,
        started: Instant,
        sink: impl FnOnce(String) + Send + Sync + 'static,
    ) -> Response<Self> {
        let mut response = response;
        let exchange = response.extensions_mut().remove::<Exchange>();
        Self::wrap_with(response, exchange, started, sink)
    }

    /// [`LoggedBody::wrap`] with the [`Exchange`] passed (the line comes
    /// from it; none logs nothing).
    pub fn wrap_with(
        response: Response<ProxyBody<B>>,
        exchange: Option<Exchange>,
        started: Instant,
        sink: impl FnOnce(String) + Send + Sync + 'static,
    ) -> Response<Self> {
        let status = response.status();
        let (parts, inner) = response.into_parts();
        let body = Self {
            inner,
            exchange,
            status,
            started,
            bytes: 0,
            end_on_error: false,
            broken: false,
            sink: Some(Box::new(sink)),
        };
        Response::from_parts(parts, body)
    }

    /// On an upstream body error, end the stream instead of passing the
    /// error on (for a runtime that would write the error's text, which
    /// names the upstream URL, into the body). The line says `body=broken_off`.
    pub fn ending_on_error(mut self) -> Self {
        self.end_on_error = true;
        self
    }
}

impl<B> Body for LoggedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.broken {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.bytes += frame.data_ref().map_or(0, |data| data.len() as u64);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.broken = true;
                if this.end_on_error {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(error)))
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        (self.broken && self.end_on_error) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        if let (Some(exchange), Some(sink)) = (self.exchange.take(), self.sink.take()) {
            let mut line = exchange.log_record(self.status, self.started.elapsed(), self.bytes);
            if self.broken {
                line = line.text("body", "broken_off");
            }
            sink(line.render(exchange.log_format()));
        }
    }
}

/// Enforces the body limit on a request body of unknown length while it
/// streams: past `max_bytes` the body fails, and [`is_body_limit_error`]
/// recognises that failure anywhere in an error's source chain.
pub fn limit_body<B>(body: B, max_bytes: u64) -> Limited<B> {
    Limited::new(body, usize::try_from(max_bytes).unwrap_or(usize::MAX))
}

/// Whether `error`, or anything in its source chain, is the body limit.
pub fn is_body_limit_error(error: &(dyn Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<LengthLimitError>() {
            return true;
        }
        current = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn full_body_yields_once() {
        let body: ProxyBody<Full<Bytes>> = ProxyBody::Full(Bytes::from_static(b"abc"));
        assert_eq!(body.size_hint().exact(), Some(3));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected, "abc");
        let empty: ProxyBody<Full<Bytes>> = ProxyBody::Full(Bytes::new());
        assert!(empty.is_end_stream());
    }

    fn logged(
        body: ProxyBody<futures_stream::Frames>,
        end_on_error: bool,
    ) -> (
        Response<LoggedBody<futures_stream::Frames>>,
        std::sync::mpsc::Receiver<String>,
    ) {
        let mut response = Response::new(body);
        response.extensions_mut().insert(Exchange::for_test());
        let (sender, receiver) = std::sync::mpsc::channel();
        let sender = std::sync::Mutex::new(sender);
        let response = LoggedBody::wrap(response, Instant::now(), move |line| {
            let _ = sender.lock().unwrap().send(line);
        });
        let response = if end_on_error {
            response.map(LoggedBody::ending_on_error)
        } else {
            response
        };
        (response, receiver)
    }

    #[tokio::test]
    async fn logged_body_counts_and_logs_once() {
        let frames = futures_stream::Frames::new(vec![
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"de")),
        ]);
        let (response, lines) = logged(ProxyBody::Upstream(frames), false);
        let collected = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(collected, "abcde");
        let line = lines.try_recv().unwrap();
        assert!(
            line.ends_with("status=200 duration_ms=0 bytes=5") || line.contains(" bytes=5"),
            "{line}"
        );
        assert!(lines.try_recv().is_err());
    }

    #[tokio::test]
    async fn logged_body_broken_off() {
        for end_on_error in [false, true] {
            let frames = futures_stream::Frames::new(vec![
                Ok(Bytes::from_static(b"abc")),
                Err("cut".into()),
            ]);
            let (response, lines) = logged(ProxyBody::Upstream(frames), end_on_error);
            let collected = response.into_body().collect().await;
            assert_eq!(collected.is_ok(), end_on_error);
            let line = lines.try_recv().unwrap();
            assert!(
                line.contains("bytes=3") && line.ends_with("body=broken_off"),
                "{line}"
            );
        }
    }

    /// A minimal `Stream` of frames, without a futures dependency.
    mod futures_stream {
        use super::*;
        use std::collections::VecDeque;

        pub struct Frames(VecDeque<Result<Bytes, BoxError>>);

        impl Frames {
            pub fn new(items: Vec<Result<Bytes, BoxError>>) -> Self {
                Self(items.into())
            }
        }

        impl Body for Frames {
            type Data = Bytes;
            type Error = BoxError;

            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
                Poll::Ready(
                    self.get_mut()
                        .0
                        .pop_front()
                        .map(|item| item.map(Frame::data)),
                )
            }
        }
    }

    #[tokio::test]
    async fn limit_is_recognised() {
        let limited = limit_body(Full::new(Bytes::from(vec![0u8; 100])), 10);
        let error = limited.collect().await.unwrap_err();
        assert!(is_body_limit_error(error.as_ref()));
        let other: BoxError = "x".into();
        assert!(!is_body_limit_error(other.as_ref()));
    }
}
