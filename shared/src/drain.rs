//! Reading out a request body the proxy will not forward.
//!
//! When the proxy answers early (a 413 from `content-length`, a refused
//! target), an HTTP/1.1 server that drops the unread body closes the
//! connection while the browser is still sending it, and the browser then
//! sees a reset instead of the JSON error. Wrapping the incoming body in
//! [`DrainOnDrop`] makes dropping it unfinished spawn a task that reads it
//! out, up to a byte and time budget, so the answer reaches the browser and
//! the connection can be reused.

use crate::body::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The most a refused body is read out, in bytes; past it the connection closes.
const DRAIN_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// The longest a refused body is read out.
const DRAIN_MAX_TIME: Duration = Duration::from_secs(30);
/// The longest the read-out waits for the next chunk: a body that stopped
/// arriving (a stalled browser) is not waited for, so its connection closes.
const DRAIN_MAX_IDLE: Duration = Duration::from_secs(2);

/// A request body that is read out in the background if dropped unfinished.
/// Needs a Tokio runtime when dropped; without one it is simply dropped.
#[derive(Debug)]
pub struct DrainOnDrop<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
{
    inner: Option<B>,
}

impl<B> DrainOnDrop<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
{
    /// Wraps `body`.
    pub fn new(body: B) -> Self {
        Self { inner: Some(body) }
    }
}

impl<B> Body for DrainOnDrop<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut().inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(Body::size_hint).unwrap_or_default()
    }
}

impl<B> Drop for DrainOnDrop<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
{
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let read_out = async {
                let mut seen = 0u64;
                while let Ok(Some(Ok(frame))) =
                    tokio::time::timeout(DRAIN_MAX_IDLE, body.frame()).await
                {
                    seen += frame.data_ref().map_or(0, |data| data.len() as u64);
                    if seen > DRAIN_MAX_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_MAX_TIME, read_out).await;
        });
    }
}
