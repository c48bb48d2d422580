//! The lease: taking it, renewing it, waiting for the peer that holds it,
//! and giving it back (one lease call at a time).

use super::*;

/// The one lease call in flight besides an attempt's own lease request: an
/// extension of the lease over a backoff, or its release. The next lease
/// request waits for it.
#[derive(Debug, Clone, Copy, Hash)]
pub(super) struct LeaseCall {
    pub(super) id: RequestId,
    pub(super) deadline: MonoTime,
    /// An extension: the lease is ours until then once it is granted. A
    /// release: `None`.
    pub(super) extension_until: Option<MonoTime>,
    /// An extension after which the lease is to be given back: the release
    /// is sent once the extension is settled (its answer or its deadline).
    pub(super) release_after: bool,
}

/// The lease, across refreshes: until when it is ours, and the one lease
/// call in flight.
#[derive(Debug, Clone, Copy, Default, Hash)]
pub(super) struct Lease {
    /// Until when we hold the cache's lease, if we do.
    pub(super) until: Option<MonoTime>,
    /// The lease call in flight (an extension or a release), if any.
    pub(super) call: Option<LeaseCall>,
}

impl Lease {
    /// Whether the lease is ours at `now`.
    pub(super) fn holds(&self, now: MonoTime) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// Whether a release is in flight at `now`, or will follow the
    /// extension in flight.
    pub(super) fn release_in_flight(&self, now: MonoTime) -> bool {
        self.call
            .is_some_and(|c| c.deadline > now && (c.extension_until.is_none() || c.release_after))
    }
}

/// The refresh under way: how it has failed so far and how long it has
/// waited for a peer. A new token ends it ([`Attempt::default`]).
#[derive(Debug, Clone, Copy, Default, Hash)]
pub(super) struct Attempt {
    /// Consecutive failed attempts (fetches, or stores of a rotated token).
    pub(super) failures: u32,
    /// Consecutive failed fetches that reached no answering authority.
    pub(super) unreached: u32,
    /// Since when, and how many times, we have found the lease busy in this
    /// refresh (kept across re-reads).
    pub(super) peer_wait: Option<(MonoTime, u32)>,
}

/// After this many consecutive failures that reached no answering
/// authority, a lease holder hands the lease on.
pub(super) const HAND_ON_AFTER: u32 = 3;

/// While a rotated refresh token is not durable (its store failed), the
/// holder stores again, and renews its lease, at least this many times per
/// lease TTL, whatever the backoff: the cache still holds the spent refresh
/// token, and a peer that takes a lapsed lease presents it. The attempts
/// cost the cache only (one store and one lease request each), never the
/// authority. Found by `no_grant_is_lost_without_an_inherent_loss`: with a
/// 1.35 s backoff doubling and a 6.2 s lease, three failed stores in a row
/// outlasted the lease, and the grant was revoked.
pub(super) const ROTATED_STORES_PER_LEASE: u32 = 4;

/// How often a follower without a valid token looks for the holder's token
/// while the holder's lease is young (jittered ±50 %, so at most 37.5 ms
/// pass between looks: the holder usually stores within tens of
/// milliseconds of taking the lease). After [`FOLLOWER_FAST_FOR`] the wait
/// doubles each second, up to [`FOLLOWER_MAX_WAIT`]. A cold start thus
/// costs a follower at most about 40 reads (and as many lease requests),
/// usually a handful; through a long outage, while it has no valid token,
/// at most about 4 a second (so it sees the holder's token within 375 ms of
/// the store); a follower with a valid token waits the peer wait.
pub(super) const FOLLOWER_WAIT: Duration = Duration::from_millis(25);

/// How long followers without a token look at the fast rate.
pub(super) const FOLLOWER_FAST_FOR: Duration = Duration::from_secs(1);

/// The longest a follower without a valid token waits between looks.
pub(super) const FOLLOWER_MAX_WAIT: Duration = Duration::from_millis(250);

impl RefreshMachine {
    pub(super) fn acquire_lease(&mut self) {
        self.request_lease(false);
    }

    /// What waited for the lease call in flight goes on, once it is
    /// answered or given up on: the lease request (its `renewal`), or the
    /// stop.
    pub(super) fn after_lease_call(&mut self, then_lease: Option<bool>) {
        match then_lease {
            Some(renewal) => self.request_lease(renewal),
            None => self.stop(),
        }
    }

    /// Asks for the lease (`renewal`: see [`RequestKind::Lease`]).
    pub(super) fn request_lease(&mut self, renewal: bool) {
        if let Some(call) = self.lease.call {
            // One lease call at a time: the one in flight first.
            self.phase = Phase::Waiting(Request {
                id: call.id,
                deadline: call.deadline,
                kind: RequestKind::LeaseCall {
                    then_lease: Some(renewal),
                },
            });
            return;
        }
        // A renewal skips the read that follows a grant only while the
        // lease it renews still holds: one that lapsed (a read under it
        // slower than its TTL) may have been taken by a peer meanwhile, who
        // may have rotated the refresh token we read, so the grant is a new
        // lease and the cache is read again under it.
        let renewal = renewal && self.holds_lease();
        let sent = self.now.mono;
        let timeout = self.config.cache_timeout;
        let id = self.send(RequestKind::Lease { sent, renewal }, timeout);
        let ttl = self.config.lease_ttl;
        self.outbox
            .push_back(Action::AcquireLease { id, ttl, timeout });
    }

    pub(super) fn on_lease(
        &mut self,
        result: Result<LeaseOutcome, CacheError>,
        sent: MonoTime,
        renewal: bool,
    ) {
        let outcome = match result {
            Ok(outcome) => outcome,
            // Whether a peer holds the lease is unknown: a refresh-token
            // flow must not risk presenting a token the holder is rotating.
            Err(error) if self.is_refresh_flow() => {
                return self.retry_later(FetchError::transient(format!(
                    "not refreshing without the lease ({error})"
                )));
            }
            // A broken lease must not stop a client-credentials refresh.
            Err(_) => LeaseOutcome::Unsupported,
        };
        match outcome {
            LeaseOutcome::Granted => {
                // A renewal holds only if the lease it renews held until
                // its answer: granted after that lapsed, it may be a new
                // lease, a peer may have held the one between and rotated
                // the refresh token we read, so the cache is read again.
                let renewal = renewal && self.holds_lease();
                self.lease.until = Some(sent + self.config.lease_ttl);
                if let Some((since, _)) = self.attempt.peer_wait.take() {
                    // Taking over from a holder that kept failing: carry on
                    // the fleet's backoff curve rather than start it again.
                    let waited = self.now.mono.saturating_duration_since(since);
                    self.attempt.failures = self
                        .attempt
                        .failures
                        .max(self.config.backoff.steps_within(waited));
                }
                if renewal {
                    self.fetch();
                } else {
                    self.read_cache(CacheRead::UnderLease);
                }
            }
            LeaseOutcome::Unsupported => self.fetch(),
            LeaseOutcome::Busy => {
                let (since, waits) = self.attempt.peer_wait.unwrap_or((self.now.mono, 0));
                let waits = waits.saturating_add(1);
                self.attempt.peer_wait = Some((since, waits));
                let wait = self.follower_wait(since, waits);
                self.phase = Phase::PeerWait {
                    recheck_at: self.now.mono + wait,
                };
            }
        }
    }

    /// How long a follower waits before it looks again, after its `waits`th
    /// busy answer since `since`.
    ///
    /// Without a valid token it looks soon: the holder usually stores
    /// within tens of milliseconds (a cold start). With one, it backs off,
    /// doubling from the peer wait up to a quarter of its token's remaining
    /// validity, so a long outage costs the cache a few calls per follower
    /// rather than two a second; and its next look never lies past its
    /// token's expiry, so it has the holder's token within a fast wait of
    /// the later of the holder's store and its own expiry.
    pub(super) fn follower_wait(&mut self, since: MonoTime, waits: u32) -> Duration {
        let until_expiry = self
            .served
            .current
            .as_ref()
            .map(|t| t.expires_at().saturating_duration_since(self.token_now()))
            .filter(|left| !left.is_zero());
        if let Some(left) = until_expiry {
            #[cfg(feature = "mutants")]
            if self.mutant(super::mutants::Mutant::FollowerIgnoresExpiry) {
                return self.jittered(self.config.peer_wait);
            }
            let doublings = waits.saturating_sub(1).min(16);
            let cap = (left / 4).max(self.config.peer_wait);
            let base = self
                .config
                .peer_wait
                .saturating_mul(1 << doublings)
                .min(cap);
            return self.jittered(base).min(left).max(Duration::from_millis(1));
        }
        // The fast looks count from the later of the first busy answer and
        // the token's expiry: a follower whose token expires during a long
        // wait looks fast again (it was the peer wait before, and the fast
        // second was spent while it still had a token).
        let waited = self.now.mono.saturating_duration_since(since);
        let expired_for = self.served.current.as_ref().map_or(waited, |t| {
            self.token_now().saturating_duration_since(t.expires_at())
        });
        let waited = waited.min(expired_for);
        let base = if waited < FOLLOWER_FAST_FOR {
            FOLLOWER_WAIT.min(self.config.peer_wait)
        } else {
            let doublings = (waited.as_millis() / FOLLOWER_FAST_FOR.as_millis()).min(16) as u32;
            FOLLOWER_WAIT.saturating_mul(1 << doublings).min(
                FOLLOWER_MAX_WAIT
                    .min(self.config.peer_wait)
                    .max(FOLLOWER_WAIT),
            )
        };
        self.jittered(base)
    }

    /// `timeout`, or less so that it ends with half of the lease we hold
    /// left: while a rotated refresh token is not durable, a cache request
    /// that hangs is given up on early enough to try again (renewing the
    /// lease first) before the lease lapses and a peer takes it. Once the
    /// lease has lapsed, `timeout` as it is.
    pub(super) fn within_the_lease(&self, timeout: Duration) -> Duration {
        match self.lease.until {
            Some(until) if until > self.now.mono => {
                timeout.min(until.saturating_duration_since(self.now.mono) / 2)
            }
            _ => timeout,
        }
    }

    /// The deadline of a cache request: the cache timeout, or, while a
    /// rotated refresh token is not durable (`undurable`), that bounded by
    /// [`within_the_lease`](Self::within_the_lease).
    pub(super) fn cache_timeout_keeping_the_lease(&self, undurable: bool) -> Duration {
        if undurable {
            self.within_the_lease(self.config.cache_timeout)
        } else {
            self.config.cache_timeout
        }
    }

    /// A rotated refresh token has just become ours and is not durable
    /// yet, with a cache read or lease request in flight that its store
    /// must wait for: that request is given up on by
    /// [`within_the_lease`](Self::within_the_lease), as if it had been sent
    /// under the rotation, so the store goes out while the lease still
    /// holds (drivers take a new call of a kind whose last one is still
    /// running for one given up on). (A read sent before a late answer
    /// rotated the grant kept the full cache timeout: when it hung, the
    /// lease lapsed under the waiting store, and a peer presented the spent
    /// refresh token.)
    pub(super) fn keep_the_lease_for_the_store(&mut self) {
        // With the lease already gone, nothing protects the spent refresh
        // token from a peer but the store itself: give up on the request
        // at once.
        let keep = if self.holds_lease() {
            self.now.mono + self.within_the_lease(self.config.cache_timeout)
        } else {
            self.now.mono
        };
        if let Phase::Waiting(request) = &mut self.phase {
            if matches!(
                request.kind,
                RequestKind::Load(_) | RequestKind::Lease { .. }
            ) {
                request.deadline = request.deadline.min(keep);
            }
        }
    }

    /// Whether the lease we hold outlasts a fetch sent now (its deadline).
    pub(super) fn holds_lease_for_a_fetch(&self) -> bool {
        let fetch = self.fetch_deadline();
        self.lease
            .until
            .is_some_and(|until| self.now.mono + fetch < until)
    }

    pub(super) fn holds_lease(&self) -> bool {
        self.lease.holds(self.now.mono)
    }

    /// Gives the lease back, unless a late answer's token is still to be
    /// stored under it (that store releases it).
    pub(super) fn release_lease(&mut self) {
        if self.follow_up.is_some() {
            return;
        }
        if self.lease.until.take().is_some() {
            self.give_back();
        }
    }

    /// Sends a release, one lease call at a time: after an extension in
    /// flight (once it is settled). A release in flight was sent after
    /// every lease request still out (lease requests wait for lease calls),
    /// and the cache carries out one instance's calls in order: it gives
    /// those grants back too.
    pub(super) fn give_back(&mut self) {
        let now = self.now.mono;
        match &mut self.lease.call {
            Some(call) if call.deadline > now => {
                if call.extension_until.is_some() {
                    call.release_after = true;
                }
            }
            _ => self.send_release(),
        }
    }

    /// Whether a release is in flight, or will follow the extension in
    /// flight.
    pub(super) fn release_in_flight(&self) -> bool {
        self.lease.release_in_flight(self.now.mono)
    }

    fn send_release(&mut self) {
        let id = self.new_id();
        let timeout = self.config.cache_timeout;
        self.lease.call = Some(LeaseCall {
            id,
            deadline: self.now.mono + timeout,
            extension_until: None,
            release_after: false,
        });
        self.outbox.push_back(Action::ReleaseLease { id, timeout });
    }

    /// The lease call in flight was answered (`Some`) or given up on at its
    /// deadline (`None`).
    pub(super) fn settle_lease_call(&mut self, answer: Option<&Answer>) {
        let Some(call) = self.lease.call.take() else {
            return;
        };
        if call.release_after {
            self.lease.until = None;
            return self.send_release();
        }
        // A release that failed only lets the lease lapse by its TTL (the
        // driver reports it).
        let (Some(until), Some(answer)) = (call.extension_until, answer) else {
            return;
        };
        self.lease.until = match answer {
            Answer::Lease(_, Ok(LeaseOutcome::Granted)) => Some(until),
            // A failing cache says nothing of the lease: it is ours until
            // when we knew, and the next step asks again, which extends it
            // if it is still ours and takes it if it lapsed. (Dropping it
            // here stopped the renewals: a holder with a late answer's
            // rotated refresh token then let the lease lapse, and a peer
            // presented the spent one.)
            Answer::Lease(_, Err(_)) => self.lease.until,
            // Lost it: it lapsed and a peer took it.
            _ => None,
        };
    }
}
