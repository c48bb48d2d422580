//! [`Tokio`]: the driver on a tokio runtime.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use tokio::runtime::Handle;

use super::Runtime;

/// A tokio runtime: the driver's task is spawned on it, blocking sources
/// and caches run on its blocking pool. The runtime needs its time driver
/// (`enable_time`, or `enable_all`; `#[tokio::main]` has it).
///
/// ```
/// use freshtoken::driver::Builder;
/// use freshtoken::runtime::Tokio;
/// use freshtoken::source::ConstTokenSource;
///
/// // Outside a runtime, `current` is an error, not a panic.
/// assert!(Tokio::current().is_err());
///
/// let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
/// // From any thread, with the runtime's handle:
/// let (tokens, driver) = Builder::new()
///     .spawn(Tokio::new(rt.handle().clone()), ConstTokenSource::new("key", Some(3600)));
/// let header = rt.block_on(async { tokens.ready().await.map(|t| t.authorization_header()) });
/// assert_eq!(header.unwrap(), "Bearer key");
/// rt.block_on(driver.shutdown());
/// ```
#[derive(Clone, Debug)]
pub struct Tokio(Handle);

impl Tokio {
    /// The runtime the caller is running in, or an error outside one.
    pub fn current() -> Result<Self, NoTokioRuntime> {
        Handle::try_current().map(Tokio).map_err(|_| NoTokioRuntime)
    }

    /// The runtime behind `handle`; usable from any thread.
    pub fn new(handle: Handle) -> Self {
        Tokio(handle)
    }
}

impl From<Handle> for Tokio {
    fn from(handle: Handle) -> Self {
        Tokio(handle)
    }
}

/// [`Tokio::current`] was called outside a tokio runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not inside a tokio runtime: call from within one, or pass its handle with `Tokio::new`")]
pub struct NoTokioRuntime;

impl Runtime for Tokio {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        drop(self.0.spawn(task));
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        // A far deadline tokio cannot represent is clamped by tokio itself
        // (`sleep` saturates at about 2 years).
        tokio::time::sleep(duration)
    }

    fn spawn_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Option<T>> + Send + 'static {
        self.0.spawn_blocking(f).map(Result::ok)
    }
}
