//! The timer table: every deadline the machine keeps, by name, on the one
//! clock that [`Output::Timeout`] speaks in.
//!
//! Modelled on quinn-proto's `TimerTable`: each deadline is a named
//! [`Timer`]; the next timeout is the earliest of them; and the timers
//! that are due are handled in one pass, each once, in a fixed order
//! ([`Timer::ALL`]), at one place: before and after every input
//! ([`RefreshMachine::expire_timers`]). Nothing else calls a timer's
//! handler, so no handler runs inside another.
//!
//! Unlike quinn's, the table is not a second store of deadlines: each
//! deadline lives with the state it belongs to (a phase's variant, the
//! lease call in flight, the current token), so it cannot outlive that
//! state or disagree with it; [`RefreshMachine::deadline`] reads one, and
//! [`RefreshMachine::next_timer`] the earliest. Deadlines on the monotonic
//! clock and on the token's clock (see [`RefreshMachine::token_now`]) are
//! put on the wall clock as read now, so comparing them with now is
//! comparing each on its own clock.

use super::*;

/// A deadline the machine keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// The lease call in flight (an extension or a release) is given up
    /// on, whatever the phase: a release that was to follow it goes out.
    LeaseCall,
    /// The awaited request (a refresh's, or the one a shutdown drains) is
    /// given up on: it failed.
    Request,
    /// Idle: a refresh a reader asked for early (a rejected token, a
    /// validity it needs) is due, as the invalidation rate limit allows.
    Early,
    /// Idle: the current token's (jittered) refresh time, on its clock.
    Refresh,
    /// A follower looks for the holder's token again, or a revoked grant
    /// re-reads the cache for a live one.
    Recheck,
    /// A backoff's retry (once the lease call it waits for is settled).
    Retry,
    /// The current token expires: readers are told.
    Expiry,
}

impl Timer {
    /// Every timer, in the order a pass handles the due ones: a lease call
    /// settled first (a retry may wait for it), then the phase's timers,
    /// and the expiry last (it tells readers what the pass left served).
    pub(super) const ALL: [Timer; 7] = [
        Timer::LeaseCall,
        Timer::Request,
        Timer::Early,
        Timer::Refresh,
        Timer::Recheck,
        Timer::Retry,
        Timer::Expiry,
    ];
}

/// When each timer last fired, on both clocks. A timer fires at most once
/// per instant: one made due again by its own work at the same instant (a
/// token stale on arrival, a zero backoff, an answer that comes back at
/// once) waits until time has passed, as a driver's next wake-up does, so
/// no configuration turns the passes into a loop without time. (A step of
/// the wall clock is a new instant: a token it made stale is renewed.)
#[derive(Debug, Clone, Copy, Default, Hash)]
pub(super) struct Fired([Option<(Timestamp, MonoTime)>; Timer::ALL.len()]);

impl Fired {
    fn at(&self, timer: Timer) -> Option<(Timestamp, MonoTime)> {
        self.0[timer as usize]
    }

    fn set(&mut self, timer: Timer, now: Now) {
        self.0[timer as usize] = Some((now.wall, now.mono));
    }
}

impl RefreshMachine {
    /// The earliest timer's deadline, if any is set: the table read.
    ///
    /// Only the timers the phase may set are read (`deadline` is `None`
    /// for the others, checked in debug builds). It is read three times per
    /// input, so each `deadline` here is for a named timer, which the
    /// compiler reduces to the few fields it reads.
    pub(super) fn next_timer(&self) -> Option<Timestamp> {
        let mut next = None;
        let mut read = |timer| {
            if let Some(at) = self.deadline(timer) {
                next = Some(next.map_or(at, |n: Timestamp| n.min(at)));
            }
        };
        read(Timer::LeaseCall);
        match self.phase {
            Phase::Waiting(_) | Phase::Draining { .. } => read(Timer::Request),
            Phase::Idle { .. } => {
                read(Timer::Early);
                read(Timer::Refresh);
            }
            Phase::PeerWait { .. } | Phase::Failed { .. } => read(Timer::Recheck),
            Phase::Backoff { .. } => read(Timer::Retry),
            Phase::Created | Phase::Stopped => {}
        }
        read(Timer::Expiry);
        debug_assert_eq!(
            next,
            Timer::ALL.iter().filter_map(|&t| self.deadline(t)).min(),
            "a timer set in a phase `next_timer` does not read it in"
        );
        next
    }

    /// One timer's deadline, on the wall clock as read now.
    #[inline(always)]
    pub(super) fn deadline(&self, timer: Timer) -> Option<Timestamp> {
        let at = |mono: MonoTime| Some(self.now.wall_at(mono));
        match (timer, &self.phase) {
            // Set while something waits for the call: a release to follow
            // it, a lease request or a stop (the awaited request is the
            // call), a backoff's retry. A call nothing waits for is settled
            // by its answer, or by the next pass after its deadline.
            (Timer::LeaseCall, phase) => {
                let awaited = match phase {
                    Phase::Waiting(r) | Phase::Draining { request: r, .. } => {
                        matches!(r.kind, RequestKind::LeaseCall { .. })
                    }
                    Phase::Backoff { .. } => true,
                    _ => false,
                };
                self.lease
                    .call
                    .filter(|c| c.release_after || awaited)
                    .and_then(|c| at(c.deadline))
            }
            (Timer::Request, Phase::Waiting(r) | Phase::Draining { request: r, .. }) => {
                at(r.deadline)
            }
            (Timer::Early, Phase::Idle { early, .. }) if *early != MonoTime::MAX => at(*early),
            (Timer::Refresh, Phase::Idle { refresh_at, .. }) => {
                Some(self.token_deadline(*refresh_at))
            }
            (Timer::Recheck, Phase::PeerWait { recheck_at } | Phase::Failed { recheck_at }) => {
                at(*recheck_at)
            }
            // A refresh waits for a lease call in flight (an extension of
            // the lease over the wait): the call's own timer wakes it. A
            // store of a rotated refresh token goes out beside it.
            (Timer::Retry, Phase::Backoff { retry_at, then })
                if self.lease.call.is_none() || then.keeps_the_lease() =>
            {
                at(*retry_at)
            }
            // Also wake at expiry, so readers waiting on changes learn of it.
            (Timer::Expiry, _) if self.expiry_to_publish() => self
                .served
                .current
                .as_ref()
                .map(|t| self.token_deadline(t.expires_at())),
            _ => None,
        }
    }

    /// The [`Output::Timeout`] for `earliest`, the earliest timer's
    /// deadline (`Timestamp::MAX`: none): it, or right after now when it
    /// is already due (the driver was late).
    pub(super) fn timeout_after(&self, earliest: Timestamp) -> Timestamp {
        earliest.max(self.now.wall + Duration::from_millis(1))
    }

    /// Handles the timers that are due, each once, in [`Timer::ALL`]'s
    /// order (a handler may make a later timer due, which this pass
    /// handles; one it makes due earlier in the order waits a millisecond).
    /// What a late answer left to do (the [`FollowUp`]) comes before any
    /// timer's work, as soon as nothing is in flight.
    ///
    /// `known` is the earliest deadline as read at the last input's clocks
    /// (by its last pass, or by `poll_output`). Every deadline is where an
    /// instant of the monotonic clock, or of the token's clock, falls on
    /// the wall clock, and both of those advance with the monotonic clock:
    /// while the wall clock keeps its offset from it, a deadline still
    /// ahead reads the same, and one passed reads now. So the caller passes
    /// `known` only when the offset held (nothing else changes the timers
    /// between inputs); debug builds check it against a fresh read.
    ///
    /// Returns the earliest deadline when no timer was due (it read it to
    /// tell), `None` when timers ran.
    pub(super) fn expire_timers(&mut self, known: Option<Timestamp>) -> Option<Timestamp> {
        // (With `known`, this carries nothing out: the pass that read it
        // ended with it, and nothing changed the phase since.)
        self.run_follow_up();
        // Most inputs find nothing due: one look at the earliest timer.
        let earliest = known.unwrap_or_else(|| self.next_timer().unwrap_or(Timestamp::MAX));
        debug_assert!(
            earliest <= self.now.wall || earliest == self.next_timer().unwrap_or(Timestamp::MAX),
            "the earliest deadline known from the last pass is not the one read now"
        );
        if earliest > self.now.wall {
            return Some(earliest);
        }
        for timer in Timer::ALL {
            self.run_follow_up();
            let due = self.deadline(timer).is_some_and(|at| at <= self.now.wall);
            if due && self.fired.at(timer) != Some((self.now.wall, self.now.mono)) {
                self.fired.set(timer, self.now);
                self.on_timer(timer);
            }
        }
        self.run_follow_up();
        None
    }

    fn on_timer(&mut self, timer: Timer) {
        let mono = self.now.mono;
        match timer {
            Timer::LeaseCall => {
                // No answer: an extension leaves the lease ours until when
                // we knew (see `settle_lease_call`); a release, to lapse by
                // its TTL (not counted among the timeouts: nothing waited
                // for it, and the drivers' metrics read a timeout as the
                // awaited request's).
                if let Some(call) = self.lease.call.filter(|c| c.extension_until.is_some()) {
                    self.emit(Event::TimedOut {
                        id: call.id,
                        fetch: false,
                    });
                }
                self.settle_lease_call(None);
            }
            Timer::Request => match std::mem::replace(&mut self.phase, Phase::Stopped) {
                Phase::Waiting(request) => self.timed_out(request),
                Phase::Draining { request, until } => self.drain_timed_out(request, until),
                phase => self.phase = phase,
            },
            Timer::Early | Timer::Refresh => {
                if timer == Timer::Early {
                    self.served.last_invalidation = Some(mono);
                }
                self.phase = Phase::Stopped;
                self.begin_refresh();
            }
            Timer::Recheck => match std::mem::replace(&mut self.phase, Phase::Stopped) {
                Phase::Failed { .. } => self.read_cache(CacheRead::AfterRevocation),
                _ => self.read_cache(CacheRead::BeforeLease),
            },
            Timer::Retry => match std::mem::replace(&mut self.phase, Phase::Stopped) {
                Phase::Backoff {
                    then: Retry::StoreRotated(token),
                    ..
                } => self.send_store(token, StoreFor::Rotated, false),
                _ => self.begin_refresh(),
            },
            Timer::Expiry => self.check_expiry(),
        }
    }
}
