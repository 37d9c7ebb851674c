//! A progress deadline for request bodies the browser streams.
//!
//! Without one, a browser that sends a head and then a trickle (or nothing)
//! holds an upstream connection until the head timeout (300 s). The setting
//! is parsed here for every target; the watch itself needs a timer, so it is
//! part of the reqwest upstream (the native targets), never of the sans-IO core.

use crate::config::{ConfigError, vars};
use std::time::Duration;

/// The default time a request body may go without a byte arriving.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Parses `FAL_PROXY_BODY_IDLE_TIMEOUT_SECS`: whole seconds from 1 to 3600.
pub(crate) fn parse_idle_timeout(value: Option<String>) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(DEFAULT_BODY_IDLE_TIMEOUT),
        Some(value) => value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|secs| (1..=3600).contains(secs))
            .map(Duration::from_secs)
            .ok_or_else(|| {
                ConfigError::new(
                    vars::BODY_IDLE_TIMEOUT_SECS,
                    "expected whole seconds from 1 to 3600",
                )
            }),
    }
}

#[cfg(feature = "reqwest")]
pub(crate) use watched::{RequestBodyError, Watched};

#[cfg(feature = "reqwest")]
mod watched {
    use crate::body::BoxError;
    use bytes::Bytes;
    use http_body::{Body, Frame, SizeHint};
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;
    use tokio::time::{Instant, Sleep};

    /// Why the browser's request body failed; found in an upstream error's
    /// source chain, so the browser is answered 400 or 408, not a 502 that
    /// blames fal.
    #[derive(Debug, thiserror::Error)]
    pub(crate) enum RequestBodyError {
        /// No byte arrived within the idle timeout.
        #[error("request body stalled")]
        Stalled,
        /// The body was malformed (bad chunked framing) or broke off.
        #[error("request body broken")]
        Broken(#[source] BoxError),
    }

    /// A request body with an idle deadline between chunks. The clock runs
    /// only while the body waits on the browser, not while the upstream is
    /// slow to take what already arrived. The timer is made the first time
    /// the body waits (a body that came whole with the request never does).
    pub(crate) struct Watched<B> {
        inner: Pin<Box<B>>,
        idle: Duration,
        sleep: Option<Pin<Box<Sleep>>>,
        waiting: bool,
    }

    impl<B> std::fmt::Debug for Watched<B> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Watched")
                .field("idle", &self.idle)
                .finish_non_exhaustive()
        }
    }

    impl<B> Watched<B> {
        /// Needs a Tokio runtime with a timer.
        pub(crate) fn new(inner: B, idle: Duration) -> Self {
            Self {
                inner: Box::pin(inner),
                idle,
                sleep: None,
                waiting: false,
            }
        }
    }

    impl<B> Body for Watched<B>
    where
        B: Body,
        B::Data: Into<Bytes>,
        B::Error: Into<BoxError>,
    {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            let this = self.get_mut();
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.waiting = false;
                    Poll::Ready(Some(Ok(frame.map_data(Into::into))))
                }
                Poll::Ready(Some(Err(error))) => {
                    Poll::Ready(Some(Err(Box::new(RequestBodyError::Broken(error.into())))))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => {
                    let sleep = match &mut this.sleep {
                        Some(sleep) if this.waiting => sleep,
                        Some(sleep) => {
                            sleep.as_mut().reset(Instant::now() + this.idle);
                            sleep
                        }
                        None => this.sleep.insert(Box::pin(tokio::time::sleep(this.idle))),
                    };
                    this.waiting = true;
                    match sleep.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            Poll::Ready(Some(Err(Box::new(RequestBodyError::Stalled))))
                        }
                        Poll::Pending => Poll::Pending,
                    }
                }
            }
        }

        fn is_end_stream(&self) -> bool {
            self.inner.is_end_stream()
        }

        fn size_hint(&self) -> SizeHint {
            self.inner.size_hint()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use http_body_util::{BodyExt, Full};
        use tokio::sync::mpsc;

        /// A body fed by a channel, without a futures dependency.
        struct Channel(mpsc::Receiver<Result<Bytes, BoxError>>);

        impl Body for Channel {
            type Data = Bytes;
            type Error = BoxError;

            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
                self.0
                    .poll_recv(cx)
                    .map(|item| item.map(|item| item.map(Frame::data)))
            }
        }

        #[tokio::test]
        async fn a_stalled_body_fails_after_the_idle_time() {
            let (sender, receiver) = mpsc::channel(1);
            let mut body = Watched::new(Channel(receiver), Duration::from_millis(100));
            sender.send(Ok(Bytes::from_static(b"a"))).await.unwrap();
            assert!(body.frame().await.unwrap().is_ok());
            let started = std::time::Instant::now();
            let error = body.frame().await.unwrap().unwrap_err();
            assert!(started.elapsed() >= Duration::from_millis(90));
            assert!(matches!(
                error.downcast_ref::<RequestBodyError>(),
                Some(RequestBodyError::Stalled)
            ));
            drop(sender);
        }

        /// Each chunk restarts the clock: a body slower in total than the
        /// idle time, but never idle that long, passes.
        #[tokio::test]
        async fn a_trickling_body_passes() {
            let (sender, receiver) = mpsc::channel(1);
            let body = Watched::new(Channel(receiver), Duration::from_millis(300));
            let feed = tokio::spawn(async move {
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_millis(75)).await;
                    sender.send(Ok(Bytes::from_static(b"x"))).await.unwrap();
                }
            });
            let started = std::time::Instant::now();
            assert_eq!(body.collect().await.unwrap().to_bytes(), "xxxxx");
            assert!(started.elapsed() >= Duration::from_millis(350));
            feed.await.unwrap();
        }

        #[tokio::test]
        async fn a_whole_body_passes_and_errors_are_marked() {
            let body = Watched::new(
                Full::new(Bytes::from_static(b"abc")),
                Duration::from_secs(5),
            );
            assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
            let (sender, receiver) = mpsc::channel(1);
            sender.send(Err("bad chunk".into())).await.unwrap();
            let error = Watched::new(Channel(receiver), Duration::from_secs(5))
                .collect()
                .await
                .unwrap_err();
            assert!(matches!(
                error.downcast_ref::<RequestBodyError>(),
                Some(RequestBodyError::Broken(_))
            ));
        }
    }
}
