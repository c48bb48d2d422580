//! The crate's one poison-tolerant lock.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, ignoring poisoning.
///
/// A panic while one of this crate's locks is held (a user's source or
/// clock panicking inside a callback, say) must not turn every later call
/// into a panic too. The data behind these locks stays consistent when a
/// holder unwinds: each critical section either completes its update or
/// leaves the previous value, so the guard is taken over as is.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
