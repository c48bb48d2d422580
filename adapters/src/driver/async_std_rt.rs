//! The async-std driver, which also serves smol: both are built on
//! async-io, whose timers and reactor run on their own thread, so the
//! driver's task runs on async-std's executor whatever executor the
//! application polls its handles from.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;

use super::run::Runtime;

#[derive(Clone)]
pub(crate) struct AsyncStd;

impl Runtime for AsyncStd {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        // Dropping an async-std JoinHandle detaches the task.
        drop(async_std::task::spawn(task));
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        async_io::Timer::after(duration).map(drop)
    }

    fn spawn_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Option<T>> + Send + 'static {
        // async-std re-raises a panic of the closure when the handle is
        // awaited; callers pass closures that contain their own panics.
        async_std::task::spawn_blocking(f).map(Some)
    }
}
