//! [`Smol`]: the driver on smol's own parts.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;

use super::Runtime;

/// smol: the driver's task on smol's global executor (`smol::spawn`),
/// timers from async-io, blocking sources and caches on the `blocking`
/// crate's pool (`smol::unblock`). It does not pull in async-std. The
/// handles work under any executor, so an application may poll them from
/// `smol::block_on`, its own `smol::Executor` or anything else.
///
/// ```
/// use freshtoken::driver::Builder;
/// use freshtoken::runtime::Smol;
/// use freshtoken::source::ConstTokenSource;
///
/// smol::block_on(async {
///     let (tokens, driver) = Builder::new().spawn(Smol, ConstTokenSource::new("key", Some(3600)));
///     assert_eq!(tokens.ready().await.unwrap().authorization_header(), "Bearer key");
///     driver.shutdown().await;
/// });
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Smol;

impl Runtime for Smol {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        smol::spawn(task).detach();
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        super::smol_timer(duration)
    }

    fn spawn_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Option<T>> + Send + 'static {
        // `unblock` re-raises a panic of `f` when awaited; the driver's
        // closures contain their own, and a stray one is caught here.
        std::panic::AssertUnwindSafe(smol::unblock(f))
            .catch_unwind()
            .map(Result::ok)
    }
}
