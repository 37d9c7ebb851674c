//! hyper's timer (for the 30 s header-read timeout), with tokio's timers
//! kept for reuse.
//!
//! hyper drops a connection's header timer when a request's head has been
//! read and asks for a new one when it starts on the next: with hyper-util's
//! `TokioTimer` that is a new tokio timer per request, put into tokio's timer
//! wheel and taken out again under its lock (about 1,600 instructions a
//! request with the box). Here a dropped timer goes on a short per-thread
//! list, and the next one asked for is taken from it and moved to its new
//! deadline: a later deadline is one atomic operation in tokio, the timer
//! staying in the wheel. The deadlines and what fires when are tokio's, as
//! before. A timer on the list that comes due wakes the task of its last
//! use once, which finds nothing to do.

use hyper::rt::{Sleep, Timer};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Timers kept per thread, at most (one per connection reading a head at
/// the same moment is what is needed).
const SPARE: usize = 1024;

thread_local! {
    static SPARES: RefCell<Vec<Pin<Box<tokio::time::Sleep>>>> = const { RefCell::new(Vec::new()) };
}

/// [`Timer`] for hyper's server connections, on tokio's timers, reused.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecyclingTimer;

impl Timer for RecyclingTimer {
    /// tokio's clock, as hyper-util's `TokioTimer` (it differs from the
    /// system's only while tokio's time is paused, in tests).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let spare = SPARES
            .try_with(|spares| spares.borrow_mut().pop())
            .ok()
            .flatten();
        let inner = match spare {
            Some(mut inner) => {
                inner.as_mut().reset(deadline.into());
                inner
            }
            None => Box::pin(tokio::time::sleep_until(deadline.into())),
        };
        Box::pin(Recycled { inner: Some(inner) })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Recycled>() {
            Some(mut recycled) => recycled.reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// A tokio timer that goes back on the thread's list when dropped.
struct Recycled {
    /// `None` only while being dropped.
    inner: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Recycled {
    fn reset(&mut self, deadline: Instant) {
        if let Some(inner) = self.inner.as_mut() {
            inner.as_mut().reset(deadline.into());
        }
    }
}

impl Future for Recycled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.inner.as_mut() {
            Some(inner) => inner.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Sleep for Recycled {}

impl Drop for Recycled {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            // After the thread's list is gone (the thread ending), the timer
            // is simply dropped.
            let _ = SPARES.try_with(|spares| {
                if let Ok(mut spares) = spares.try_borrow_mut()
                    && spares.len() < SPARE
                {
                    spares.push(inner);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reused timer fires at its new deadline, not its old one, and not
    /// before it.
    #[tokio::test(start_paused = true)]
    async fn a_reused_timer_keeps_its_new_deadline() {
        let timer = RecyclingTimer;
        let start = Instant::now();
        let first = timer.sleep_until(start + Duration::from_secs(30));
        drop(first);
        assert_eq!(SPARES.with(|spares| spares.borrow().len()), 1);
        let second = timer.sleep_until(Instant::now() + Duration::from_secs(60));
        assert_eq!(
            SPARES.with(|spares| spares.borrow().len()),
            0,
            "taken from the list"
        );
        let mut second = std::pin::pin!(second);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(
            futures_now(second.as_mut()).is_pending(),
            "fired at the old deadline"
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(
            futures_now(second.as_mut()).is_ready(),
            "did not fire at the new one"
        );
    }

    /// hyper's `reset` moves a timer; one moved earlier fires earlier.
    #[tokio::test(start_paused = true)]
    async fn reset_moves_the_deadline_either_way() {
        let timer = RecyclingTimer;
        let mut sleep = timer.sleep(Duration::from_secs(30));
        timer.reset(&mut sleep, Instant::now() + Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(futures_now(sleep.as_mut()).is_ready());
    }

    /// Polls a future once.
    fn futures_now<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(std::task::Waker::noop()))
    }
}
