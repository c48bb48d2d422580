//! An in-process cache: the fast first layer of a [`CacheStack`](super::CacheStack),
//! and a shared cache for instances living in one process (and for tests).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use freshtoken_core::{CacheError, LeaseOutcome, Token};

use super::TokenCache;

/// A token cache in this process's memory, with a lease.
///
/// Clones share the stored token and the lease, but each clone is a
/// separate lease holder: give every instance (every machine) its own clone,
/// and they coordinate like processes sharing a file or Redis.
///
/// ```
/// use freshtoken::cache::{MemoryCache, TokenCache};
/// use freshtoken::{AccessToken, LeaseOutcome, Timestamp, Token};
/// use std::time::Duration;
///
/// let a = MemoryCache::new();
/// let b = a.clone();
/// let token = Token::new(AccessToken::new("at"), Timestamp::EPOCH, Timestamp::EPOCH, Timestamp::MAX);
/// a.store(&token).unwrap();
/// assert_eq!(b.load().unwrap(), Some(token));
///
/// let ttl = Duration::from_secs(10);
/// assert_eq!(a.acquire_lease(ttl).unwrap(), LeaseOutcome::Granted);
/// assert_eq!(b.acquire_lease(ttl).unwrap(), LeaseOutcome::Busy);
/// b.release_lease().unwrap(); // not b's: no effect
/// assert_eq!(b.acquire_lease(ttl).unwrap(), LeaseOutcome::Busy);
/// a.release_lease().unwrap();
/// assert_eq!(b.acquire_lease(ttl).unwrap(), LeaseOutcome::Granted);
/// ```
pub struct MemoryCache {
    shared: Arc<Mutex<Shared>>,
    holder: u64,
}

#[derive(Default)]
struct Shared {
    token: Option<Token>,
    /// Holder and deadline. A monotonic clock is right here: the lease never
    /// leaves the process.
    lease: Option<(u64, Instant)>,
    holders: u64,
}

impl MemoryCache {
    /// An empty cache.
    pub fn new() -> Self {
        MemoryCache {
            shared: Arc::new(Mutex::new(Shared {
                holders: 1,
                ..Shared::default()
            })),
            holder: 0,
        }
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        // The state is a plain value that no panic can leave half-updated.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryCache {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for MemoryCache {
    /// Another handle on the same storage, with its own lease identity.
    fn clone(&self) -> Self {
        let mut shared = self.shared();
        let holder = shared.holders;
        shared.holders += 1;
        drop(shared);
        MemoryCache {
            shared: self.shared.clone(),
            holder,
        }
    }
}

impl fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.shared();
        f.debug_struct("MemoryCache")
            .field("holder", &self.holder)
            .field("token", &shared.token.as_ref().map(Token::id))
            .finish()
    }
}

impl TokenCache for MemoryCache {
    fn metrics_label(&self) -> &'static str {
        "memory"
    }

    fn load(&self) -> Result<Option<Token>, CacheError> {
        Ok(self.shared().token.clone())
    }

    fn store(&self, token: &Token) -> Result<(), CacheError> {
        self.shared().token = Some(token.clone());
        Ok(())
    }

    fn acquire_lease(&self, ttl: Duration) -> Result<LeaseOutcome, CacheError> {
        let now = Instant::now();
        let mut shared = self.shared();
        match shared.lease {
            Some((holder, until)) if holder != self.holder && now < until => Ok(LeaseOutcome::Busy),
            _ => {
                shared.lease = Some((self.holder, now + ttl));
                Ok(LeaseOutcome::Granted)
            }
        }
    }

    fn release_lease(&self) -> Result<(), CacheError> {
        let mut shared = self.shared();
        if shared
            .lease
            .is_some_and(|(holder, _)| holder == self.holder)
        {
            shared.lease = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshtoken_core::{AccessToken, Timestamp};

    #[test]
    fn expired_lease_is_taken_over() {
        let a = MemoryCache::new();
        let b = a.clone();
        assert_eq!(
            a.acquire_lease(Duration::ZERO).unwrap(),
            LeaseOutcome::Granted
        );
        assert_eq!(
            b.acquire_lease(Duration::from_secs(60)).unwrap(),
            LeaseOutcome::Granted
        );
        assert_eq!(
            a.acquire_lease(Duration::from_secs(60)).unwrap(),
            LeaseOutcome::Busy
        );
        // Re-acquiring one's own lease extends it.
        assert_eq!(
            b.acquire_lease(Duration::from_secs(60)).unwrap(),
            LeaseOutcome::Granted
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let c = MemoryCache::new();
        let t = Token::new(
            AccessToken::new("TOPSECRET"),
            Timestamp::EPOCH,
            Timestamp::EPOCH,
            Timestamp::MAX,
        );
        c.store(&t).unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("TOPSECRET"), "{d}");
        assert!(d.contains(&t.id().to_string()), "{d}");
    }
}
