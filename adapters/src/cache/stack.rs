//! Several caches as one: the fast and local first, the shared last.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshtoken_core::{CacheError, CacheErrorKind, Clock, LeaseOutcome, Timestamp, Token, TokenId};

use super::TokenCache;
use crate::clock::SystemClock;

/// Caches checked in order, typically memory, then a file, then Redis.
///
/// * **load** asks the layers in order and stops at the first fresh token
///   (so a fresh token in memory costs no file read and no round trip to
///   Redis). When the machine already holds a token and wants a newer one
///   ([`TokenCache::load_newer`]), a layer's token stops the search only if
///   it also expires later than the machine's: otherwise the shared layers
///   are asked, because a peer may have refreshed (or rotated the refresh
///   token) there. Among the tokens found, the winner is the one that
///   [supersedes](Token::supersedes) the others: a later refresh-token
///   generation first, then a later expiry; expired tokens still count,
///   because they may carry the newest refresh token. The winner is written
///   back to the layers above it that held nothing or something older. A
///   failing layer is skipped with a warning, but when no layer above it
///   could answer, the load fails: a refresh-token flow must not mistake a
///   local layer's token for the shared state. A layer holding a record this
///   instance cannot read ([`Unreadable`](freshtoken_core::CacheErrorKind::Unreadable):
///   a newer format, a key it lacks) fails the load too, unless the token
///   found would have stopped the search (fresh, and newer than the
///   machine's when it asks for a newer one): such a record may hold the
///   newest refresh token, so it is reported rather than hidden as a miss.
/// * **store** writes to every layer, even when one fails, and reports the
///   first failure.
/// * **the lease** is taken from the *last* layer that supports leases: the
///   most widely shared one, since a lease on a process-local layer would
///   not keep other processes from fetching. When that layer fails (Redis
///   down, or a lease its replicas did not acknowledge), the lease fails
///   with its error: a lease from a layer above would keep only this
///   machine's processes apart, and a refresh-token flow holding one could
///   present the refresh token a process elsewhere is rotating (found by
///   `tests/fleet_redis_rotation.rs`: a reuse at the authority during a
///   Redis failover). The machine then does what it does with any lease
///   error: a refresh-token flow waits and retries, a client-credentials
///   flow fetches for itself. The release goes to the layer that granted.
/// * **metrics** (feature `metrics`): when a driver uses the stack, each
///   call on each layer is counted in `freshtoken_cache_operations_total`
///   with the layer's [`metrics_label`](TokenCache::metrics_label) and its
///   position in the stack (0 for the first).
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
            .field("leased", &*crate::sync::lock(&self.leased))
            .finish()
    }
}

impl TokenCache for CacheStack {
    fn metrics_label(&self) -> &'static str {
        "stack"
    }

    /// Binds every layer.
    fn bind_config(&self, config: TokenId) {
        for layer in &self.layers {
            layer.bind_config(config);
        }
    }

    fn load(&self) -> Result<Option<Token>, CacheError> {
        self.load_newer(None)
    }

    fn load_newer(&self, newer_than: Option<Timestamp>) -> Result<Option<Token>, CacheError> {
        let now = self.clock.now();
        // What each layer asked so far held; None: nothing or failed.
        let mut held: Vec<Option<Token>> = Vec::with_capacity(self.layers.len());
        let mut best: Option<usize> = None;
        let mut last_error = None;
        let mut unreadable = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let result = layer.load_newer(newer_than);
            crate::metrics::layer_op(i, &**layer, crate::metrics::CacheOp::Load, &result);
            if result.is_ok() {
                // A more shared layer answered: a failure above it is moot.
                last_error = None;
            }
            match result {
                Ok(Some(token)) => {
                    let satisfies = token.satisfies(now, newer_than);
                    if best
                        .and_then(|b| held[b].as_ref())
                        .is_none_or(|b| token.supersedes(b))
                    {
                        best = Some(i);
                    }
                    held.push(Some(token));
                    if satisfies {
                        break;
                    }
                }
                Ok(None) => held.push(None),
                Err(e) => {
                    tracing::warn!(layer = i, error = %e, "cache layer failed to load");
                    held.push(None);
                    if e.kind() == CacheErrorKind::Unreadable {
                        unreadable.get_or_insert_with(|| e.clone());
                    }
                    last_error = Some(e);
                }
            }
        }
        let satisfied = best
            .and_then(|b| held[b].as_ref())
            .is_some_and(|t| t.satisfies(now, newer_than));
        // A layer holding a record this instance cannot read (a newer
        // format, a key it lacks) may hold the newest refresh token: unless
        // the answer satisfies the query, that is the answer, not a miss.
        if let Some(e) = unreadable {
            if !satisfied {
                return Err(e);
            }
        }
        // The most shared layer asked failed (none below it answered) and no
        // layer above could answer: report it, so that a refresh-token flow
        // does not take a local layer's token for the shared state (the
        // shared layer may hold a newer refresh token).
        if let Some(e) = last_error {
            if !satisfied {
                return Err(e);
            }
        }
        let Some(from) = best else {
            return Ok(None);
        };
        let token = held[from].clone().expect("best points at a held token");
        for (i, layer) in self.layers[..from].iter().enumerate() {
            if held[i].as_ref().is_none_or(|h| token.supersedes(h)) {
                let result = layer.store(&token);
                crate::metrics::layer_op(i, &**layer, crate::metrics::CacheOp::WriteBack, &result);
                if let Err(e) = result {
                    tracing::warn!(layer = i, error = %e, "cache layer failed to take a write-back");
                }
            }
        }
        Ok(Some(token))
    }

    fn store(&self, token: &Token) -> Result<(), CacheError> {
        let mut first_error = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let result = layer.store(token);
            crate::metrics::layer_op(i, &**layer, crate::metrics::CacheOp::Store, &result);
            if let Err(e) = result {
                tracing::warn!(layer = i, error = %e, "cache layer failed to store");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn acquire_lease(&self, ttl: Duration) -> Result<LeaseOutcome, CacheError> {
        let mut leased = crate::sync::lock(&self.leased);
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let result = layer.acquire_lease(ttl);
            crate::metrics::layer_op(i, &**layer, crate::metrics::CacheOp::Lease, &result);
            match result {
                Ok(LeaseOutcome::Unsupported) => continue,
                Ok(outcome) => {
                    *leased = (outcome == LeaseOutcome::Granted).then_some(i);
                    return Ok(outcome);
                }
                Err(e) => {
                    // Not the next layer up: see the type's docs.
                    tracing::warn!(layer = i, error = %e, "the shared cache layer failed to grant a lease");
                    *leased = None;
                    return Err(e);
                }
            }
        }
        *leased = None;
        Ok(LeaseOutcome::Unsupported)
    }

    fn release_lease(&self) -> Result<(), CacheError> {
        let leased = crate::sync::lock(&self.leased).take();
        match leased.and_then(|i| Some((i, self.layers.get(i)?))) {
            Some((i, layer)) => {
                let result = layer.release_lease();
                crate::metrics::layer_op(i, &**layer, crate::metrics::CacheOp::Release, &result);
                result
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::MemoryCache;
    use freshtoken_core::{AccessToken, ManualClock, RefreshToken, Timestamp};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A layer that counts its loads and can be made to fail.
    #[derive(Default)]
    struct Probe {
        inner: MemoryCache,
        loads: AtomicUsize,
        down: bool,
        leases: bool,
    }

    impl TokenCache for Probe {
        fn load(&self) -> Result<Option<Token>, CacheError> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            if self.down {
                return Err(CacheError::new(CacheErrorKind::Unavailable, "down"));
            }
            self.inner.load()
        }
        fn store(&self, token: &Token) -> Result<(), CacheError> {
            if self.down {
                return Err(CacheError::new(CacheErrorKind::Unavailable, "down"));
            }
            self.inner.store(token)
        }
        fn acquire_lease(&self, ttl: Duration) -> Result<LeaseOutcome, CacheError> {
            match (self.down, self.leases) {
                (true, _) => Err(CacheError::new(CacheErrorKind::Unavailable, "down")),
                (false, true) => self.inner.acquire_lease(ttl),
                (false, false) => Ok(LeaseOutcome::Unsupported),
            }
        }
        fn release_lease(&self) -> Result<(), CacheError> {
            self.inner.release_lease()
        }
    }

    fn token(name: &str, issued: u64, stale: u64, expires: u64) -> Token {
        Token::new(
            AccessToken::new(name),
            Timestamp::from_secs(issued),
            Timestamp::from_secs(stale),
            Timestamp::from_secs(expires),
        )
    }

    fn clock_at(secs: u64) -> ManualClock {
        ManualClock::new(Timestamp::from_secs(secs))
    }

    /// A layer holding a record this instance cannot read.
    struct Unreadable;

    impl TokenCache for Unreadable {
        fn load(&self) -> Result<Option<Token>, CacheError> {
            Err(CacheError::new(CacheErrorKind::Unreadable, "newer format"))
        }
        fn store(&self, _: &Token) -> Result<(), CacheError> {
            Err(CacheError::new(CacheErrorKind::Unreadable, "newer format"))
        }
    }

    #[test]
    fn an_unreadable_layer_is_not_a_miss() {
        let top = MemoryCache::new();
        let stack = CacheStack::new()
            .with(top.clone())
            .with(Unreadable)
            .with_clock(clock_at(50));
        // Nothing above it: the error, not a miss.
        let err = stack.load().unwrap_err();
        assert_eq!(err.kind(), CacheErrorKind::Unreadable);
        // A stale token above it does not hide it either...
        top.store(&token("stale", 0, 45, 60)).unwrap();
        assert_eq!(stack.load().unwrap_err().kind(), CacheErrorKind::Unreadable);
        // ...but a fresh one is used without asking the layer below.
        top.store(&token("fresh", 40, 90, 120)).unwrap();
        assert_eq!(
            stack
                .load()
                .unwrap()
                .unwrap()
                .access_token()
                .expose_secret(),
            "fresh"
        );
    }

    #[test]
    fn a_fresh_token_stops_the_search() {
        let (top, bottom) = (Arc::new(Probe::default()), Arc::new(Probe::default()));
        let stack = CacheStack::new()
            .with(top.clone())
            .with(bottom.clone())
            .with_clock(clock_at(10));
        top.store(&token("a", 0, 45, 60)).unwrap();
        bottom.store(&token("b", 0, 90, 120)).unwrap();
        assert_eq!(
            stack
                .load()
                .unwrap()
                .unwrap()
                .access_token()
                .expose_secret(),
            "a"
        );
        assert_eq!(bottom.loads.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_stale_token_lets_a_better_one_below_win_and_be_written_back() {
        let (top, mid, bottom) = (MemoryCache::new(), MemoryCache::new(), MemoryCache::new());
        let stack = CacheStack::new()
            .with(top.clone())
            .with(mid.clone())
            .with(bottom.clone())
            .with_clock(clock_at(50));
        top.store(&token("stale", 0, 45, 60)).unwrap();
        mid.store(&token("best", 30, 75, 90)).unwrap();
        bottom.store(&token("worse", 0, 45, 70)).unwrap();
        let got = stack.load().unwrap().unwrap();
        assert_eq!(got.access_token().expose_secret(), "best");
        assert_eq!(top.load().unwrap(), Some(got.clone()));
        // Not written below where it came from.
        assert_eq!(
            bottom
                .load()
                .unwrap()
                .unwrap()
                .access_token()
                .expose_secret(),
            "worse"
        );
    }

    #[test]
    fn an_expired_token_is_still_returned_for_its_refresh_token() {
        let layer = MemoryCache::new();
        let stack = CacheStack::new()
            .with(layer.clone())
            .with_clock(clock_at(100));
        let t = token("old", 0, 45, 60).with_refresh_token(Some(RefreshToken::new("rt")));
        layer.store(&t).unwrap();
        assert_eq!(stack.load().unwrap(), Some(t));
    }

    #[test]
    fn failing_layers_are_skipped_and_only_total_failure_is_an_error() {
        let down = Arc::new(Probe {
            down: true,
            ..Probe::default()
        });
        let up = MemoryCache::new();
        let stack = CacheStack::new()
            .with(down.clone())
            .with(up.clone())
            .with_clock(clock_at(10));
        assert_eq!(stack.load().unwrap(), None);
        let t = token("a", 0, 45, 60);
        // The store reaches the working layer and reports the broken one.
        assert_eq!(
            stack.store(&t).unwrap_err().kind(),
            CacheErrorKind::Unavailable
        );
        assert_eq!(stack.load().unwrap(), Some(t));
        let only_down = CacheStack::new().with(down);
        assert!(only_down.load().is_err());
        assert_eq!(CacheStack::new().load().unwrap(), None);
    }

    #[test]
    fn a_local_layer_holding_our_token_does_not_hide_the_shared_one() {
        let local = MemoryCache::new();
        let shared = MemoryCache::new();
        let stack = CacheStack::new()
            .with(local.clone())
            .with(shared.clone())
            .with_clock(clock_at(10));
        // Ours, fresh, in the local layer; a peer rotated the refresh token
        // in the shared one (its access token expires later too).
        let ours = token("ours", 0, 45, 60)
            .with_refresh_token(Some(RefreshToken::new("rt-1")))
            .with_generation(1);
        let peers = token("peers", 5, 50, 65)
            .with_refresh_token(Some(RefreshToken::new("rt-2")))
            .with_generation(2);
        local.store(&ours).unwrap();
        shared.store(&peers).unwrap();
        // A plain load stops at the fresh local token...
        assert_eq!(stack.load().unwrap(), Some(ours.clone()));
        // ...but the machine, holding `ours`, asks for something newer.
        assert_eq!(
            stack.load_newer(Some(ours.expires_at())).unwrap(),
            Some(peers.clone())
        );
        assert_eq!(local.load().unwrap(), Some(peers), "written back");
    }

    #[test]
    fn a_newer_refresh_token_below_wins_over_a_longer_lived_token_above() {
        let local = MemoryCache::new();
        let shared = MemoryCache::new();
        let stack = CacheStack::new()
            .with(local.clone())
            .with(shared.clone())
            .with_clock(clock_at(50));
        let stale_local = token("a", 0, 45, 90).with_generation(1);
        let rotated = token("b", 0, 40, 60).with_generation(2);
        local.store(&stale_local).unwrap();
        shared.store(&rotated).unwrap();
        assert_eq!(stack.load().unwrap().map(|t| t.generation()), Some(2));
    }

    #[test]
    fn a_failed_shared_layer_fails_the_load_unless_a_local_one_answers() {
        let local = MemoryCache::new();
        let down = Arc::new(Probe {
            down: true,
            ..Probe::default()
        });
        let stack = CacheStack::new()
            .with(local.clone())
            .with(down)
            .with_clock(clock_at(10));
        let ours = token("ours", 0, 45, 60);
        local.store(&ours).unwrap();
        // Fresh and nothing newer wanted: the local layer answers.
        assert_eq!(stack.load().unwrap(), Some(ours.clone()));
        // Wanting newer, the shared layer must answer, and it is down.
        assert_eq!(
            stack
                .load_newer(Some(ours.expires_at()))
                .unwrap_err()
                .kind(),
            CacheErrorKind::Unavailable
        );
    }

    #[test]
    fn a_failing_shared_lease_is_not_replaced_by_a_local_one() {
        let local = MemoryCache::new();
        let shared = Arc::new(Probe {
            leases: true,
            down: true,
            ..Probe::default()
        });
        let stack = CacheStack::new().with(local.clone()).with(shared);
        let ttl = Duration::from_secs(10);
        let err = stack.acquire_lease(ttl).unwrap_err();
        assert_eq!(err.kind(), CacheErrorKind::Unavailable);
        // The process-local layer was not leased either.
        assert_eq!(local.acquire_lease(ttl).unwrap(), LeaseOutcome::Granted);
        stack.release_lease().unwrap();
    }

    #[test]
    fn the_lease_comes_from_the_lowest_layer_that_has_one() {
        let no_lease = Arc::new(Probe::default());
        let local = MemoryCache::new();
        let shared = Arc::new(Probe {
            leases: true,
            ..Probe::default()
        });
        let stack = CacheStack::new()
            .with(local.clone())
            .with(shared.clone())
            .with(no_lease);
        let peer = shared.inner.clone();
        let ttl = Duration::from_secs(10);
        assert_eq!(stack.acquire_lease(ttl).unwrap(), LeaseOutcome::Granted);
        assert_eq!(peer.acquire_lease(ttl).unwrap(), LeaseOutcome::Busy);
        // The process-local layer was not used.
        assert_eq!(
            local.clone().acquire_lease(ttl).unwrap(),
            LeaseOutcome::Granted
        );
        stack.release_lease().unwrap();
        assert_eq!(peer.acquire_lease(ttl).unwrap(), LeaseOutcome::Granted);
        assert_eq!(stack.acquire_lease(ttl).unwrap(), LeaseOutcome::Busy);
        assert_eq!(
            CacheStack::new().acquire_lease(ttl).unwrap(),
            LeaseOutcome::Unsupported
        );
    }
}
