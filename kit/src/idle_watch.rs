//! The header-read timeout, kept per connection instead of per request.
//!
//! hyper's own `header_read_timeout` arms a boxed timer in tokio's timer wheel each time
//! it waits for a request head: on a kept-alive connection, after every response. That is
//! an allocation, a wheel insertion and a removal per request (with the ack wait, tokio's
//! timers were ~6% of the edge's samples; docs/BENCHMARKS.md). Here each connection counts
//! the requests it starts and finishes (two relaxed atomic adds per request; a request
//! finishes when its response's body has been sent or dropped), and one
//! watch per connection looks at the counts four times per timeout: a connection with no
//! request in progress, started or finished for a whole timeout is closed. A client that
//! trickles its headers, or opens a connection and sends nothing, is cut off between one
//! and one and a quarter timeouts after its last answer (or its connection), as an idle
//! kept-alive connection is; a request being served (a command waiting for its verdict, a
//! body on its way, bounded by its own limits, a streamed export) keeps its connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

/// Checks of the counts per timeout.
const CHECKS_PER_TIMEOUT: u32 = 4;

/// What one connection's requests did, as its watch sees it.
#[derive(Debug, Default)]
pub struct Activity {
    started: AtomicU64,
    finished: AtomicU64,
}

impl Activity {
    /// The counts the watch compares between two looks: (started, finished).
    fn look(&self) -> (u64, u64) {
        // `finished` first: a request finishing between the two loads can only make the
        // connection look busier, never idle by mistake. Relaxed: the counts are only
        // compared with themselves (every count is made in the connection's own task).
        let finished = self.finished.load(Ordering::Relaxed);
        let started = self.started.load(Ordering::Relaxed);
        (started, finished)
    }
}

/// Whether a connection has been idle long enough to close, from the looks so far.
///
/// The rule in one place, without I/O: [`CHECKS_PER_TIMEOUT`] consecutive looks found
/// nothing in progress and nothing started or finished since the look before (the first
/// look compares with the connection's start). A request that finished just after a look
/// makes the next look busy, so a connection is closed only after a whole timeout idle.
#[derive(Debug, Default)]
struct IdleRule {
    last: (u64, u64),
    idle_looks: u32,
}

impl IdleRule {
    /// Takes one look at (started, finished); `true` when the connection is to be closed.
    fn observe(&mut self, now: (u64, u64)) -> bool {
        let idle = now == self.last && now.0 == now.1;
        self.idle_looks = if idle { self.idle_looks + 1 } else { 0 };
        self.last = now;
        self.idle_looks >= CHECKS_PER_TIMEOUT
    }
}

/// Resolves once the connection behind `activity` has been idle for `timeout` (at most a
/// quarter of it more).
pub async fn idle_for(activity: Arc<Activity>, timeout: Duration) {
    // tokio's timers have a millisecond's resolution (and an interval cannot be zero).
    let period = (timeout / CHECKS_PER_TIMEOUT).max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rule = IdleRule::default();
    loop {
        ticks.tick().await;
        if rule.observe(activity.look()) {
            return;
        }
    }
}

/// A connection's service, counting the requests it starts and finishes.
#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S, R, B> hyper::service::Service<R> for Counted<S>
where
    S: hyper::service::Service<R, Response = http::Response<B>>,
{
    type Response = http::Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn call(&self, request: R) -> Self::Future {
        self.activity.started.fetch_add(1, Ordering::Relaxed);
        CountedFuture {
            inner: self.inner.call(request),
            finished: Some(Finished(self.activity.clone())),
        }
    }
}

/// Counts a request finished when dropped: with its response's body once that is sent (or
/// abandoned), or with the request's future when there is no response.
#[derive(Debug)]
struct Finished(Arc<Activity>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

pin_project! {
    /// A request's future on a [`Counted`] service.
    pub struct CountedFuture<F> {
        #[pin]
        inner: F,
        finished: Option<Finished>,
    }
}

impl<F, B, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<CountedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answered = std::task::ready!(this.inner.poll(context));
        // The request stays in progress while its body is sent: hyper drops this future
        // once it has the head, and a streamed body (an export) can take longer than the
        // timeout.
        let finished = this.finished.take();
        Poll::Ready(answered.map(|response| {
            response.map(|body| CountedBody {
                inner: body,
                _finished: finished,
            })
        }))
    }
}

pin_project! {
    /// A response body that counts its request finished when dropped.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        _finished: Option<Finished>,
    }
}

impl<B: http_body::Body> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_never_sends_a_request_is_closed_after_the_timeout() {
        let mut rule = IdleRule::default();
        let looks: Vec<bool> = (0..CHECKS_PER_TIMEOUT)
            .map(|_| rule.observe((0, 0)))
            .collect();
        assert_eq!(looks, [false, false, false, true]);
    }

    #[test]
    fn a_request_in_progress_keeps_the_connection_whatever_its_length() {
        let mut rule = IdleRule::default();
        rule.observe((0, 0));
        for _ in 0..100 {
            assert!(!rule.observe((1, 0)), "a request is being served");
        }
        // Finished just after the last look: that look was busy, and a whole timeout of
        // looks follows.
        let closed: Vec<bool> = (0..=CHECKS_PER_TIMEOUT)
            .map(|_| rule.observe((1, 1)))
            .collect();
        assert_eq!(closed, [false, false, false, false, true]);
    }

    #[test]
    fn requests_started_between_looks_restart_the_count() {
        let mut rule = IdleRule::default();
        assert!(!rule.observe((0, 0)));
        assert!(!rule.observe((0, 0)));
        assert!(!rule.observe((0, 0)));
        // A request started and finished between two looks: busy, not idle.
        assert!(!rule.observe((1, 1)));
        assert!(!rule.observe((1, 1)));
        assert!(!rule.observe((1, 1)));
        assert!(!rule.observe((1, 1)));
        assert!(rule.observe((1, 1)));
    }

    #[tokio::test]
    async fn the_watch_fires_after_the_timeout_not_before() {
        let activity = Arc::new(Activity::default());
        let started = tokio::time::Instant::now();
        idle_for(activity, Duration::from_millis(400)).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(400), "{waited:?}");
        // At most a quarter more, and some slack for a busy test machine.
        assert!(waited <= Duration::from_millis(1_500), "{waited:?}");
    }

    /// A service that answers after the number of milliseconds it is asked.
    struct Sleeper;

    impl hyper::service::Service<u64> for Sleeper {
        type Response = http::Response<String>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn call(&self, millis: u64) -> Self::Future {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(millis)).await;
                Ok(http::Response::new(millis.to_string()))
            })
        }
    }

    #[tokio::test]
    async fn a_long_request_keeps_its_connection_and_every_request_is_counted() {
        use hyper::service::Service as _;
        let activity = Arc::new(Activity::default());
        let service = Counted::new(Sleeper, activity.clone());
        // Five timeouts long: the watch must not close the connection meanwhile.
        let slow = service.call(1_000);
        assert_eq!(activity.look(), (1, 0));
        let watch = idle_for(activity.clone(), Duration::from_millis(200));
        tokio::pin!(watch);
        let response = tokio::select! {
            biased;
            answer = slow => answer.ok(),
            () = &mut watch => panic!("closed while a request was in progress"),
        };
        // Answered, but its body not sent yet: still in progress.
        assert_eq!(activity.look(), (1, 0));
        let body = response.map(http::Response::into_body);
        assert_eq!(body.as_ref().map(|body| body.inner.as_str()), Some("1000"));
        drop(body);
        assert_eq!(activity.look(), (1, 1), "finished once its body is gone");
        drop(service.call(5));
        assert_eq!(
            activity.look(),
            (2, 2),
            "an abandoned request counts as finished"
        );
        // Idle from now on: the same watch closes it.
        tokio::time::timeout(Duration::from_secs(5), &mut watch)
            .await
            .expect("an idle connection is closed");
    }

    #[tokio::test]
    async fn a_timeout_too_short_for_the_timers_still_works() {
        let activity = Arc::new(Activity::default());
        tokio::time::timeout(
            Duration::from_secs(5),
            idle_for(activity, Duration::from_nanos(3)),
        )
        .await
        .expect("closed after the shortest period tokio can time");
    }
}
