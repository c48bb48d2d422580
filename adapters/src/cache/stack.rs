//! Several caches as one: the fast and local first, the shared last.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use freshtoken_core::{CacheError, Clock, LeaseOutcome, Token, TokenStatus};

use super::TokenCache;
use crate::clock::SystemClock;

/// Caches checked in order, typically memory, then a file, then Redis.
///
/// * **load** asks the layers in order and stops at the first fresh token
///   (so a fresh token in memory costs no file read and no round trip to
///   Redis). Otherwise the token that lives longest among those found wins,
///   by the machine's own rule (a later `expires_at` is better); expired
///   tokens still count, because they may carry the newest refresh token.
///   The winner is written back to the layers above it that held nothing
///   or something worse. A failing layer is skipped with a warning; the load
///   fails only when every layer failed.
/// * **store** writes to every layer, even when one fails, and reports the
///   first failure.
/// * **the lease** is taken from the *last* layer that supports leases: the
///   most widely shared one, since a lease on a process-local layer would
///   not keep other processes from fetching. When that layer fails (Redis
///   down), the next one up is tried, so the processes on one machine still
///   coordinate through the file. The release goes to the layer that granted.
///
/// ```
/// use freshtoken::cache::{CacheStack, MemoryCache, TokenCache};
/// use freshtoken::{AccessToken, Timestamp, Token};
///
/// let local = MemoryCache::new();
/// let shared = MemoryCache::new();
/// let stack = CacheStack::new().with(local.clone()).with(shared.clone());
///
/// let token = Token::new(AccessToken::new("at"), Timestamp::EPOCH, Timestamp::MAX, Timestamp::MAX);
/// shared.store(&token).unwrap();
/// assert_eq!(stack.load().unwrap(), Some(token.clone()));
/// // Written back to the layer above.
/// assert_eq!(local.load().unwrap(), Some(token));
/// ```
pub struct CacheStack {
    layers: Vec<Box<dyn TokenCache>>,
    clock: Arc<dyn Clock>,
    /// The index of the layer that granted the lease we hold, if any.
    leased: Mutex<Option<usize>>,
}

impl CacheStack {
    /// An empty stack (which behaves as a cache that never has a token).
    pub fn new() -> Self {
        CacheStack {
            layers: Vec::new(),
            clock: Arc::new(SystemClock),
            leased: Mutex::new(None),
        }
    }

    /// Adds a layer below the existing ones.
    pub fn with(mut self, layer: impl TokenCache) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// Uses `clock` to tell fresh from stale tokens (default: [`SystemClock`]).
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the stack has no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Default for CacheStack {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CacheStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheStack")
            .field("layers", &self.layers.len())
            .field(
                "leased",
                &*self.leased.lock().unwrap_or_else(PoisonError::into_inner),
            )
            .finish()
    }
}

impl TokenCache for CacheStack {
    fn load(&self) -> Result<Option<Token>, CacheError> {
        let now = self.clock.now();
        // What each layer asked so far held, by expiry; None: nothing or failed.
        let mut held = Vec::with_capacity(self.layers.len());
        let mut best: Option<(usize, Token)> = None;
        let mut failures = 0;
        let mut last_error = None;
        for (i, layer) in self.layers.iter().enumerate() {
            match layer.load() {
                Ok(Some(token)) => {
                    held.push(Some(token.expires_at()));
                    let fresh = token.status(now) == TokenStatus::Fresh;
                    if best
                        .as_ref()
                        .is_none_or(|(_, b)| token.expires_at() > b.expires_at())
                    {
                        best = Some((i, token));
                    }
                    if fresh {
                        break;
                    }
                }
                Ok(None) => held.push(None),
                Err(e) => {
                    tracing::warn!(layer = i, error = %e, "cache layer failed to load; skipping it");
                    held.push(None);
                    failures += 1;
                    last_error = Some(e);
                }
            }
        }
        let Some((from, token)) = best else {
            // A miss unless no layer could answer at all.
            return match last_error {
                Some(e) if failures == self.layers.len() => Err(e),
                _ => Ok(None),
            };
        };
        for (i, layer) in self.layers[..from].iter().enumerate() {
            if held[i].is_none_or(|expires| expires < token.expires_at()) {
                if let Err(e) = layer.store(&token) {
                    tracing::warn!(layer = i, error = %e, "cache layer failed to take a write-back");
                }
            }
        }
        Ok(Some(token))
    }

    fn store(&self, token: &Token) -> Result<(), CacheError> {
        let mut first_error = None;
        for (i, layer) in self.layers.iter().enumerate() {
            if let Err(e) = layer.store(token) {
                tracing::warn!(layer = i, error = %e, "cache layer failed to store");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn acquire_lease(&self, ttl: Duration) -> Result<LeaseOutcome, CacheError> {
        let mut leased = self.leased.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, layer) in self.layers.iter().enumerate().rev() {
            match layer.acquire_lease(ttl) {
                Ok(LeaseOutcome::Unsupported) => continue,
                Ok(outcome) => {
                    *leased = (outcome == LeaseOutcome::Granted).then_some(i);
                    return Ok(outcome);
                }
                Err(e) => {
                    tracing::warn!(layer = i, error = %e, "cache layer failed to grant a lease; trying the next one up");
                }
            }
        }
        *leased = None;
        Ok(LeaseOutcome::Unsupported)
    }

    fn release_lease(&self) -> Result<(), CacheError> {
        let leased = self
            .leased
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match leased.and_then(|i| self.layers.get(i)) {
            Some(layer) => layer.release_lease(),
            None => Ok(()),
        }
    }
}
