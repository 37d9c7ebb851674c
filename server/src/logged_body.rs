//! The response body, counted, with the request's log line written when
//! the body is finished or dropped (the browser went away).

use bytes::Bytes;
use fal_proxy_core::{BoxError, Exchange, ProxyBody};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// A proxied response body that logs its exchange once.
#[derive(Debug)]
pub struct LoggedBody {
    inner: ProxyBody<reqwest_body::Body>,
    exchange: Option<Exchange>,
    status: StatusCode,
    started: Instant,
    bytes: u64,
}

mod reqwest_body {
    /// The upstream body type of the reqwest upstream.
    pub type Body =
        <fal_proxy_core::ReqwestUpstream as fal_proxy_core::Upstream<hyper::body::Incoming>>::Body;
}

impl LoggedBody {
    pub fn wrap(
        response: Response<ProxyBody<reqwest_body::Body>>,
        started: Instant,
    ) -> Response<Self> {
        let status = response.status();
        let (mut parts, inner) = response.into_parts();
        let exchange = parts.extensions.remove::<Exchange>();
        Response::from_parts(
            parts,
            Self {
                inner,
                exchange,
                status,
                started,
                bytes: 0,
            },
        )
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.bytes += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(exchange) = self.exchange.take() {
            eprintln!(
                "fal-proxy: {}",
                exchange.log_line(self.status, self.started.elapsed(), self.bytes)
            );
        }
    }
}
