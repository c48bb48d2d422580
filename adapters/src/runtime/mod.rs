//! Executors the async driver runs on: a [`Runtime`] is a value you pass
//! to [`Builder::spawn`](crate::driver::Builder::spawn).
//!
//! | runtime | feature | timers | blocking sources and caches run on |
//! | --- | --- | --- | --- |
//! | [`Tokio`] | `tokio` | tokio's | tokio's blocking pool |
//! | [`Smol`] | `smol` | async-io's | the `blocking` crate's pool |
//! | [`AsyncStd`] | `async-std` | async-io's | async-std's blocking pool |
//!
//! The three share one run loop (the driver polls the machine's answers,
//! the handles' commands and one timer in a single task); a runtime only
//! says how to spawn that task, how to sleep, and where blocking calls go.
//! To run the driver on another executor, implement [`Runtime`]: it is the
//! whole interface.
//!
//! ```
//! # #[cfg(feature = "smol")]
//! # {
//! use freshtoken::driver::Builder;
//! use freshtoken::runtime::Smol;
//! use freshtoken::source::ConstTokenSource;
//!
//! smol::block_on(async {
//!     let (tokens, driver) = Builder::new().spawn(Smol, ConstTokenSource::new("key", Some(3600)));
//!     assert!(tokens.ready().await.is_ok());
//!     driver.shutdown().await;
//! });
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

#[cfg(feature = "async-std")]
mod async_std;
#[cfg(feature = "smol")]
mod smol;
#[cfg(feature = "tokio")]
mod tokio;

#[cfg(feature = "async-std")]
pub use self::async_std::AsyncStd;
#[cfg(feature = "smol")]
pub use self::smol::Smol;
#[cfg(feature = "tokio")]
pub use self::tokio::{NoTokioRuntime, Tokio};

/// What the async driver needs from an executor: spawn one task, sleep,
/// and run blocking calls off the executor's threads.
///
/// ```
/// use freshtoken::runtime::Runtime;
/// use std::future::Future;
/// use std::time::Duration;
///
/// /// Runs the driver on a thread of its own, with `futures`' executor.
/// #[derive(Clone)]
/// struct OwnThread;
///
/// impl Runtime for OwnThread {
///     fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
///         std::thread::spawn(move || futures::executor::block_on(task));
///     }
///     fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
///         // A thread per sleep keeps the example short; use a real timer.
///         let (tx, rx) = futures::channel::oneshot::channel::<()>();
///         std::thread::spawn(move || {
///             std::thread::sleep(duration);
///             drop(tx.send(()));
///         });
///         async move { drop(rx.await) }
///     }
///     fn spawn_blocking<T: Send + 'static>(
///         &self,
///         f: impl FnOnce() -> T + Send + 'static,
///     ) -> impl Future<Output = Option<T>> + Send + 'static {
///         let (tx, rx) = futures::channel::oneshot::channel();
///         std::thread::spawn(move || drop(tx.send(f())));
///         async move { rx.await.ok() }
///     }
/// }
///
/// use freshtoken::driver::Builder;
/// use freshtoken::source::ConstTokenSource;
/// let (tokens, driver) = Builder::new().spawn(OwnThread, ConstTokenSource::new("key", Some(3600)));
/// assert!(futures::executor::block_on(tokens.ready()).is_ok());
/// futures::executor::block_on(driver.shutdown());
/// ```
pub trait Runtime: Clone + Send + Sync + 'static {
    /// Runs `task` in the background, detached: the driver stops through
    /// its commands, never by being aborted.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static);

    /// Completes after `duration`.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static;

    /// Runs `f` where blocking is allowed; `None` if it did not complete
    /// (it panicked, or the runtime is shutting down). The driver passes
    /// closures that contain their own panics.
    fn spawn_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Option<T>> + Send + 'static;
}

/// An async-io timer for `duration`; a duration too long for an `Instant`
/// never fires (async-io's `Timer::after` saturates to "never").
#[cfg(any(feature = "async-std", feature = "smol"))]
async fn smol_timer(duration: Duration) {
    async_io::Timer::after(duration).await;
}
