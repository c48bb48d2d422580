//! [`AsyncStd`]: the driver on async-std.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;

use super::Runtime;

/// async-std's global executor; timers from async-io, blocking calls on
/// async-std's blocking pool. async-std is discontinued upstream: new
/// code on that family of runtimes should use [`Smol`](super::Smol)
/// (feature `smol`), which does not pull in async-std.
///
/// ```
/// use freshtoken::driver::Builder;
/// use freshtoken::runtime::AsyncStd;
/// use freshtoken::source::ConstTokenSource;
///
/// async_std::task::block_on(async {
///     let (tokens, driver) = Builder::new().spawn(AsyncStd, ConstTokenSource::new("key", Some(3600)));
///     assert!(tokens.ready().await.is_ok());
///     driver.shutdown().await;
/// });
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct AsyncStd;

impl Runtime for AsyncStd {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        // Dropping an async-std JoinHandle detaches the task.
        drop(async_std::task::spawn(task));
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        super::smol_timer(duration)
    }

    fn spawn_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Option<T>> + Send + 'static {
        async_std::task::spawn_blocking(f).map(Some)
    }
}
