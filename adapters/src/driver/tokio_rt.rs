//! The tokio driver: the shared run loop on a tokio runtime; blocking
//! sources and caches run on tokio's blocking pool.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use tokio::runtime::Handle;

use super::run::Runtime;

#[derive(Clone)]
pub(crate) struct Tokio(pub(crate) Handle);

impl Tokio {
    /// The current runtime; panics outside one, like `tokio::spawn`.
    pub(crate) fn current() -> Self {
        Tokio(Handle::current())
    }
}

impl Runtime for Tokio {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        // Detached: the driver stops through its commands, not by abort.
        drop(self.0.spawn(task));
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        tokio::time::sleep(duration)
    }

    fn spawn_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Option<T>> + Send + 'static {
        self.0.spawn_blocking(f).map(Result::ok)
    }
}
