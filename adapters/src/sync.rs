//! Locks that outlive a panic.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking over a lock poisoned by a panic elsewhere.
///
/// Every mutex in this crate guards data that is whole after each
/// statement (a queue, a map, a counter), so a panic while it was held
/// cannot leave it half-written, and refusing to go on would turn one
/// panic into many.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
