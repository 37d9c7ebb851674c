//! Bodies for targets built on `http-body` (native server, Vercel, Lambda).

use crate::forward::ProxyBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{LengthLimitError, Limited};
use std::error::Error;
use std::pin::Pin;
use std::task::{Context, Poll};

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

    #[tokio::test]
    async fn limit_is_recognised() {
        let limited = limit_body(Full::new(Bytes::from(vec![0u8; 100])), 10);
        let error = limited.collect().await.unwrap_err();
        assert!(is_body_limit_error(error.as_ref()));
        let other: BoxError = "x".into();
        assert!(!is_body_limit_error(other.as_ref()));
    }
}
