//! [`TokenWatch`]: a receiver that remembers the snapshot it has seen.

use std::sync::Arc;
use std::time::Duration;

use freshtoken_core::Snapshot;

use super::{Closed, TokenHandle};

/// Wakes on every new snapshot without missing one, from
/// [`TokenHandle::watch`]: like `tokio::sync::watch::Receiver`, it
/// remembers the version it last looked at, so a snapshot published
/// between a read and the next `changed()` makes that `changed()` return at
/// once. It counts as a [`TokenHandle`] (keeps the driver running).
///
/// ```
/// use freshtoken::driver::Builder;
/// use freshtoken::source::ConstTokenSource;
/// use std::time::Duration;
///
/// let (tokens, driver) = Builder::new()
///     .spawn_thread(ConstTokenSource::new("key", Some(3600)))
///     .expect("a thread");
/// let mut watch = tokens.watch();
/// // The first token may already be out: `wait_changed` sees it either way.
/// assert_eq!(watch.wait_changed(Duration::from_secs(5)), Ok(true));
/// let snapshot = watch.snapshot_and_update();
/// assert!(snapshot.token.is_some());
/// assert!(!watch.has_changed());
/// drop(watch);
/// driver.shutdown_blocking();
/// ```
#[derive(Debug, Clone)]
pub struct TokenWatch {
    handle: TokenHandle,
    seen: u64,
}

impl TokenWatch {
    /// A watch that has seen nothing yet: the first `changed()` returns as
    /// soon as anything has been published.
    pub(crate) fn new(handle: TokenHandle) -> Self {
        TokenWatch { handle, seen: 0 }
    }

    /// Whether a snapshot was published since this watch last looked.
    pub fn has_changed(&self) -> bool {
        self.handle.version() != self.seen
    }

    /// The latest snapshot, marking it seen.
    pub fn snapshot_and_update(&mut self) -> Arc<Snapshot> {
        // Version first: a publish in between is then seen again, never
        // missed.
        self.seen = self.handle.version();
        self.handle.snapshot()
    }

    /// Resolves once a snapshot this watch has not seen is published (at
    /// once if one already was), and marks it seen; fails once the driver
    /// has stopped with nothing newer. Works under any executor.
    pub async fn changed(&mut self) -> Result<(), Closed> {
        self.handle.changed_since(self.seen).await?;
        self.seen = self.handle.version();
        Ok(())
    }

    /// The blocking [`changed`](Self::changed): `Ok(true)` on a new
    /// snapshot, `Ok(false)` when `timeout` passed first.
    pub fn wait_changed(&mut self, timeout: Duration) -> Result<bool, Closed> {
        let changed = self.handle.wait_changed_since(self.seen, timeout)?;
        if changed {
            self.seen = self.handle.version();
        }
        Ok(changed)
    }

    /// The handle this watch reads through.
    pub fn handle(&self) -> &TokenHandle {
        &self.handle
    }
}
