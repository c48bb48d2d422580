//! Shutdown: a flag on the normal path. The request in flight is finished
//! (a fetched token stored, a granted lease given back), then the lease is
//! released and its answer awaited, and only then `Stop`.

use super::*;

impl RefreshMachine {
    pub(super) fn shutdown(&mut self) {
        match std::mem::replace(&mut self.phase, Phase::Stopped) {
            // Wait for the answer: a fetch may rotate the refresh token, a
            // store makes it durable, a lease granted later would block
            // peers for its TTL.
            Phase::Waiting(request) if !matches!(request.kind, RequestKind::Load(_)) => {
                let until = self.drain_bound();
                self.phase = Phase::Draining { request, until };
            }
            phase @ Phase::Draining { .. } => self.phase = phase,
            // A rotated refresh token not yet stored: one last try.
            Phase::Backoff {
                then: Retry::StoreRotated(token),
                ..
            } => self.send_store(token, StoreFor::Rotated, true),
            _ => self.stop(),
        }
    }

    /// How long a shutdown may wait: a fetch's answer, then its store.
    pub(super) fn drain_bound(&self) -> MonoTime {
        self.now.mono
            + self
                .config
                .fetch_timeout
                .saturating_add(self.config.cache_timeout)
    }

    /// The answer to the request a shutdown is waiting for.
    pub(super) fn drained(&mut self, request: Request, until: MonoTime, answer: Answer) {
        match (request.kind, answer) {
            (
                RequestKind::Fetch {
                    sent, generation, ..
                },
                Answer::Fetched(_, result),
            ) => {
                // A failed fetch ends the drain.
                let Ok(response) = *result else {
                    return self.stop();
                };
                let (token, rotated) = self.accept_fetched(response, sent, generation);
                // Served unless a token served meanwhile outlives it.
                let alive = Self::dead_on_arrival(&token, self.now.token_clock(sent)).is_none()
                    && !self.current_outlives(&token, sent);
                if alive {
                    self.make_current(token.clone(), sent);
                    self.emit(Event::refreshed(request.id, &token));
                    self.served.state.set(RefreshState::Healthy);
                    self.publish();
                }
                if self.config.cache && (alive || rotated) {
                    let store_for = if rotated {
                        StoreFor::Rotated
                    } else {
                        StoreFor::Sharing
                    };
                    return self.send_store(token, store_for, true);
                }
            }
            // Granted: give it back before stopping, unless a release sent
            // after this request (a late grant's) is in flight: the cache
            // carries out one instance's calls in order, so it gives this
            // one back too.
            (RequestKind::Lease { sent, .. }, Answer::Lease(_, Ok(LeaseOutcome::Granted)))
                if !self.release_in_flight() =>
            {
                self.lease.until = Some(sent + self.config.lease_ttl);
            }
            // The rotated refresh token is not durable yet: try again while
            // the drain bound allows (a flaky cache must not cost the grant).
            (RequestKind::Store { token, rotated, .. }, Answer::Stored(_, Err(_)))
                if rotated && self.now.mono < until =>
            {
                return self.send_store(token, StoreFor::Rotated, true);
            }
            _ => {}
        }
        self.stop();
    }

    /// The request a shutdown drains got no answer by its deadline: a
    /// rotated refresh token's store is tried again while the drain bound
    /// allows, anything else ends the drain.
    pub(super) fn drain_timed_out(&mut self, request: Request, until: MonoTime) {
        self.emit(Event::TimedOut {
            id: request.id,
            fetch: matches!(request.kind, RequestKind::Fetch { .. }),
        });
        match request.kind {
            // Given up on like any fetch: a late answer is still learned
            // from (its rotated refresh token stored before `Stop`).
            RequestKind::Fetch {
                sent, generation, ..
            } => {
                self.abandon(request.id, sent, generation);
                self.stop()
            }
            RequestKind::Store { token, rotated, .. } if rotated && self.now.mono < until => {
                self.send_store(token, StoreFor::Rotated, true)
            }
            _ => self.stop(),
        }
    }

    /// Stops once nothing is left to do: what a late answer left to store
    /// first, then the lease given back and its release answered (to its
    /// deadline), so the next process is granted the lease at once.
    pub(super) fn stop(&mut self) {
        if let Some(follow_up) = self.follow_up.take() {
            if self.config.cache && self.follow_up_stands(&follow_up) {
                return self.send_store(follow_up.token, follow_up.store_for, true);
            }
        }
        // The release follows a lease extension in flight (whose grant it
        // gives back); a release already in flight covers the lease.
        self.release_lease();
        let call = self.lease.call.filter(|c| c.deadline > self.now.mono);
        #[cfg(feature = "mutants")]
        let call = call.filter(|_| !self.mutant(super::mutants::Mutant::StopBeforeRelease));
        if let Some(call) = call {
            let request = Request {
                id: call.id,
                deadline: call.deadline,
                kind: RequestKind::LeaseCall { then_lease: None },
            };
            self.phase = Phase::Draining {
                request,
                until: call.deadline,
            };
            return;
        }
        self.served.state.set(RefreshState::Stopped);
        self.publish();
        self.outbox.push_back(Action::Stop);
        self.phase = Phase::Stopped;
    }
}
