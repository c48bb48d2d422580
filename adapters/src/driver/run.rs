//! The run loop shared by the async drivers, over a tiny [`Runtime`] trait.
//!
//! Sources and caches come in two kinds, blocking and async; a [`Fetcher`]
//! and a [`CacheRunner`] hide which, so there is one loop: blocking calls go
//! to the runtime's blocking pool, async ones are polled in the loop's own
//! task. Either way a panic is the job's failure.
//!
//! One task owns the machine. It waits, with `futures`-style polling, for
//! whichever comes first: an answer of a job (several may be out: one the
//! machine has given up on at its deadline is still polled, because its
//! answer may carry a rotated refresh token), a command from the handles,
//! or the timer (the machine's next deadline, capped by the heartbeat).

use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use freshtoken_core::handle::Command;
use freshtoken_core::{FetchRequest, Input};
use futures::future::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};

use super::engine::{fetch_blocking, fetched, CacheJob, Engine, Job, JobKind, Next};
use crate::cache::{AsyncTokenCache, TokenCache};
use crate::source::{AsyncTokenSource, TokenSource};

/// What the run loop needs from an executor.
pub(crate) trait Runtime: Clone + Send + Sync + 'static {
    /// Runs `task` in the background.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static);

    /// Completes after `duration`.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static;

    /// Runs `f` on the blocking pool; `None` if it did not complete (a
    /// panic, a runtime shutting down).
    fn spawn_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Option<T>> + Send + 'static;
}

type Answer = Pin<Box<dyn Future<Output = Option<Input>> + Send>>;

/// How the loop gets a token: a blocking source on the runtime's blocking
/// pool, or an async source in the driver's task.
pub(crate) trait Fetcher<R>: Send + Sync + 'static {
    /// The fetch's answer, with panics contained.
    fn fetch(&self, rt: &R, request: FetchRequest) -> Answer;
}

/// How the loop carries out cache jobs: a blocking cache on the runtime's
/// blocking pool, or an async cache in the driver's task.
pub(crate) trait CacheRunner<R>: Send + Sync + 'static {
    /// The job's answer, with panics contained.
    fn run(&self, rt: &R, job: CacheJob) -> Answer;
}

/// A [`TokenSource`] run on the blocking pool.
pub(crate) struct BlockingSource<S>(pub(crate) Arc<S>);

impl<R: Runtime, S: TokenSource> Fetcher<R> for BlockingSource<S> {
    fn fetch(&self, rt: &R, request: FetchRequest) -> Answer {
        let source = self.0.clone();
        on_pool(rt, JobKind::Fetch(request.id), move || {
            fetch_blocking(&*source, &request)
        })
    }
}

/// An [`AsyncTokenSource`], polled in the driver's task.
pub(crate) struct AsyncSource<S>(pub(crate) Arc<S>);

impl<R: Runtime, S: AsyncTokenSource> Fetcher<R> for AsyncSource<S> {
    fn fetch(&self, _rt: &R, request: FetchRequest) -> Answer {
        let source = self.0.clone();
        in_task(JobKind::Fetch(request.id), async move {
            Some(fetched(request.id, source.fetch(&request).await))
        })
    }
}

/// A [`TokenCache`] run on the blocking pool.
pub(crate) struct BlockingCache(pub(crate) Arc<dyn TokenCache>);

impl<R: Runtime> CacheRunner<R> for BlockingCache {
    fn run(&self, rt: &R, job: CacheJob) -> Answer {
        let cache = self.0.clone();
        on_pool(rt, job.kind(), move || job.run(&*cache))
    }
}

/// An [`AsyncTokenCache`], polled in the driver's task.
pub(crate) struct AsyncCache<C>(pub(crate) Arc<C>);

impl<R: Runtime, C: AsyncTokenCache> CacheRunner<R> for AsyncCache<C> {
    fn run(&self, _rt: &R, job: CacheJob) -> Answer {
        let cache = self.0.clone();
        in_task(job.kind(), async move { job.run_async(&*cache).await })
    }
}

/// `f` on the blocking pool. `f` contains its own panics; `None` from the
/// pool (the runtime is shutting down, or a panic slipped through) is the
/// job's failure.
fn on_pool<R: Runtime>(
    rt: &R,
    kind: JobKind,
    f: impl FnOnce() -> Option<Input> + Send + 'static,
) -> Answer {
    let done = rt.spawn_blocking(f);
    Box::pin(done.map(move |answer| answer.unwrap_or_else(|| kind.failed("panicked"))))
}

/// `job`, to be polled in the driver's task, with a panic while polling
/// it turned into the job's failure.
fn in_task(kind: JobKind, job: impl Future<Output = Option<Input>> + Send + 'static) -> Answer {
    Box::pin(
        AssertUnwindSafe(job)
            .catch_unwind()
            .map(move |answer| answer.unwrap_or_else(|_| kind.failed("panicked"))),
    )
}

/// Spawns the run loop on `rt`.
pub(crate) fn spawn<R: Runtime>(
    rt: R,
    engine: Engine,
    fetcher: impl Fetcher<R>,
    caches: impl CacheRunner<R>,
) {
    let span = tracing::info_span!("freshtoken");
    rt.clone().spawn(tracing::Instrument::instrument(
        run(rt, engine, fetcher, caches),
        span,
    ));
}

/// What woke the loop.
enum Wake {
    Answered(Option<Input>),
    Command(Command),
    Timer,
}

async fn run<R: Runtime>(
    rt: R,
    mut engine: Engine,
    fetcher: impl Fetcher<R>,
    caches: impl CacheRunner<R>,
) {
    engine.start();
    let mut answers: FuturesUnordered<Answer> = FuturesUnordered::new();
    loop {
        let sleep = match engine.next() {
            Next::Stop => return,
            Next::Sleep(d) => d,
            Next::Job(job) => {
                answers.push(match job {
                    Job::Fetch(request) => fetcher.fetch(&rt, request),
                    Job::Cache(job) => caches.run(&rt, job),
                });
                continue;
            }
        };
        let wake = {
            let mut timer = pin!(rt.sleep(sleep));
            let mut command = pin!(engine.publisher().recv());
            poll_fn(|cx| {
                if let Poll::Ready(Some(input)) = answers.poll_next_unpin(cx) {
                    return Poll::Ready(Wake::Answered(input));
                }
                if let Poll::Ready(c) = command.as_mut().poll(cx) {
                    return Poll::Ready(Wake::Command(c));
                }
                timer.as_mut().poll(cx).map(|()| Wake::Timer)
            })
            .await
        };
        match wake {
            Wake::Answered(Some(input)) => engine.feed(input),
            Wake::Answered(None) => {}
            Wake::Command(c) => engine.command(c),
            Wake::Timer => engine.tick(),
        }
    }
}
