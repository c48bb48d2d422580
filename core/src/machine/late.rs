//! Answers that are not the awaited one: the one rule for all of them,
//! and the follow-up it leaves for the next step with nothing in flight.

use super::*;

/// What an answer that was not the awaited one requires (a late fetch
/// answer: make its rotated refresh token durable, or share its newer
/// token), carried out at the next step at which no request is in flight:
/// never beside the request in flight, never instead of it.
#[derive(Debug, Clone)]
pub(super) struct FollowUp {
    pub(super) token: Arc<Token>,
    pub(super) store_for: StoreFor,
}

impl RefreshMachine {
    /// An answer to a request the machine no longer waits for.
    pub(super) fn late(&mut self, answer: Answer) {
        match answer {
            // A late failure is ignored, and its fetch's record kept.
            Answer::Fetched(id, result) => {
                let Ok(response) = *result else {
                    return self.ignore();
                };
                let Some(fetch) = self.grant.take_abandoned(id) else {
                    return self.ignore();
                };
                self.on_late_fetch(response, fetch);
            }
            // A lease granted after we stopped waiting for it: give it
            // back, or peers wait for a holder that is not fetching. (A
            // release in flight was sent after the request, and the cache
            // carries out one instance's calls in order: it gives it back.)
            Answer::Lease(_, Ok(LeaseOutcome::Granted))
                if !self.holds_lease() && !self.release_in_flight() =>
            {
                self.ignore();
                self.give_back();
            }
            _ => self.ignore(),
        }
    }

    /// A fetch we gave up on answered after all: the one rule for every
    /// answer that is not the awaited one, whatever the phase. Learn from
    /// it (a rotated refresh token is the grant now: `accept_fetched` took
    /// it), serve it when it is better, and queue what it requires (make
    /// its rotated refresh token durable, share its newer token) as the
    /// [`FollowUp`], carried out at the next step with no request in
    /// flight. It never preempts or duplicates a request in flight: at most
    /// one request of each kind is out, always. (Before, such answers
    /// replaced the step in flight: a second store beside the first, a
    /// lease request beside a lease extension, each found by a fuzzer or a
    /// user and each given a branch of its own.)
    pub(super) fn on_late_fetch(&mut self, response: TokenResponse, fetch: Abandoned) {
        // Its life counts from when it was sent, like any answer's.
        let (token, rotated) = self.accept_fetched(response, fetch.sent, fetch.generation);
        let newer = self.is_better(&token, fetch.sent);
        if !(rotated || newer) {
            return self.ignore();
        }
        self.emit(Event::LateAnswerUsed { id: fetch.id });
        let durable_first = rotated && self.config.cache;
        if newer {
            self.make_current(token.clone(), fetch.sent);
            if !matches!(
                self.phase,
                Phase::Backoff {
                    then: Retry::StoreRotated(_),
                    ..
                }
            ) {
                self.attempt.failures = 0;
                self.served.state.set(RefreshState::Healthy);
            }
            if !durable_first {
                self.publish();
            }
        }
        if !self.config.cache {
            if self.is_free() {
                self.idle_until_refresh();
            }
            return;
        }
        let store_for = match (newer, rotated) {
            (true, true) => StoreFor::RotatedThenPublish,
            (false, true) => StoreFor::Rotated,
            (_, false) => StoreFor::Sharing,
        };
        if rotated {
            self.keep_the_lease_for_the_store();
        }
        #[cfg(feature = "mutants")]
        if self.mutant(super::mutants::Mutant::StoreBesideStore)
            && matches!(&self.phase, Phase::Waiting(r) if matches!(r.kind, RequestKind::Store { .. }))
        {
            return self.send_store(token, store_for, false);
        }
        self.follow_up = Some(Box::new(FollowUp { token, store_for }));
    }

    /// Whether no request is awaited, so the next step may send one (a
    /// store may go out beside a lease extension: another kind).
    pub(super) fn is_free(&self) -> bool {
        matches!(
            self.phase,
            Phase::Idle { .. }
                | Phase::PeerWait { .. }
                | Phase::Failed { .. }
                | Phase::Backoff { .. }
        )
    }

    /// Carries out the follow-up once nothing is in flight, unless it is
    /// moot (a newer token was served, or a later refresh token learned).
    #[inline]
    pub(super) fn run_follow_up(&mut self) {
        // Called several times per input and nearly always with none: the
        // check is inlined, the work is not.
        if self.follow_up.is_some() && self.is_free() {
            self.carry_out_follow_up();
        }
    }

    #[cold]
    fn carry_out_follow_up(&mut self) {
        if let Some(follow_up) = self.follow_up.take() {
            if self.follow_up_stands(&follow_up) {
                self.send_store(follow_up.token, follow_up.store_for, false);
            } else if matches!(self.phase, Phase::Idle { .. }) {
                // Moot: the lease it kept is not needed any more.
                self.release_lease();
            }
        }
    }

    pub(super) fn follow_up_stands(&self, follow_up: &FollowUp) -> bool {
        if follow_up.store_for.is_rotated() {
            self.grant
                .newest
                .as_ref()
                .is_some_and(|g| g.generation == follow_up.token.generation())
        } else {
            self.served
                .current
                .as_ref()
                .is_some_and(|t| t.id() == follow_up.token.id())
        }
    }
}
