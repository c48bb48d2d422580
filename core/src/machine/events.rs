//! Events out: what happened inside the machine that drivers log and
//! count, and that the inputs and actions alone do not tell (a request
//! given up on, a dead answer, what became of a reader's 401, a late answer
//! used, a token adopted). Drivers drain them with
//! [`RefreshMachine::poll_event`] after each input, as str0m's and
//! quinn-proto's users do; [`MachineStats`] counts the same events, so the
//! two never disagree.

use super::*;

/// The most events kept for a driver that does not drain them (the
/// simulator, a driver of one's own): older ones are dropped, and the
/// counters in [`MachineStats`] still count them.
const QUEUED_EVENTS: usize = 64;

/// Something that happened in the machine, from
/// [`RefreshMachine::poll_event`].
///
/// ```
/// use freshtoken_core::*;
/// use std::time::Duration;
///
/// let mut m = RefreshMachine::new(MachineConfig::default());
/// let t0 = Timestamp::from_secs(1_000);
/// m.handle_input(Input::Start, t0);
/// let Output::Action(Action::Fetch(request)) = m.poll_output() else { panic!() };
/// // No answer within the fetch timeout: the machine gives up on it.
/// m.handle_input(Input::Tick, t0 + MachineConfig::default().fetch_timeout);
/// assert_eq!(m.poll_event(), Some(Event::TimedOut { id: request.id, fetch: true }));
/// assert_eq!(m.poll_event(), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A fetch's answer became the token readers are served.
    Refreshed {
        /// The fetch.
        id: RequestId,
        /// The new token.
        token: TokenId,
        /// When it goes stale (wall clock).
        stale_at: Timestamp,
        /// When it expires (wall clock).
        expires_at: Timestamp,
    },
    /// The machine gave up on a request at its deadline (a late answer is
    /// still recognised). Releases are not reported: nothing waits for
    /// them.
    TimedOut {
        /// The request.
        id: RequestId,
        /// Whether it was a fetch (else a cache call).
        fetch: bool,
    },
    /// A fetch was answered with a token that had already expired (an
    /// answer slower than the token's life, or a clock far off): a failure.
    DeadOnArrival {
        /// The fetch.
        id: RequestId,
    },
    /// What became of a reader's report of a rejected token.
    Invalidation(InvalidationOutcome),
    /// A fetch given up on answered late, and its token or its rotated
    /// refresh token was used.
    LateAnswerUsed {
        /// The fetch.
        id: RequestId,
    },
    /// A token from the cache replaced ours (a peer's, most often).
    Adopted {
        /// The adopted token.
        token: TokenId,
    },
}

/// What became of [`Input::Invalidate`] (see [`Event::Invalidation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidationOutcome {
    /// A refresh started for it.
    Accepted,
    /// Within the invalidation interval of the last one: the refresh waits
    /// for the interval.
    RateLimited,
    /// It joined a refresh under way or scheduled, or named a token a
    /// refresh has already replaced.
    Collapsed,
    /// The machine cannot act on it now (starting, failed, shutting down).
    Ignored,
}

impl Event {
    /// [`Event::Refreshed`] for `token`, the answer to fetch `id`.
    pub(super) fn refreshed(id: RequestId, token: &Token) -> Self {
        Event::Refreshed {
            id,
            token: token.id(),
            stale_at: token.stale_at(),
            expires_at: token.expires_at(),
        }
    }
}

impl RefreshMachine {
    /// The next event, if any: call after each input until `None`.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Records `event`: counted in the stats, and queued for the driver.
    pub(super) fn emit(&mut self, event: Event) {
        let stats = &mut self.stats;
        match &event {
            Event::TimedOut { .. } => stats.timeouts += 1,
            Event::DeadOnArrival { .. } => {}
            Event::Invalidation(InvalidationOutcome::Accepted) => stats.invalidations += 1,
            Event::Invalidation(InvalidationOutcome::RateLimited) => {
                stats.invalidations_rate_limited += 1
            }
            Event::Invalidation(InvalidationOutcome::Collapsed) => {
                stats.invalidations_collapsed += 1
            }
            Event::Invalidation(InvalidationOutcome::Ignored) => stats.ignored_inputs += 1,
            Event::LateAnswerUsed { .. } => stats.late_answers_used += 1,
            Event::Adopted { .. } => stats.adoptions += 1,
            Event::Refreshed { .. } => {}
        }
        if self.events.len() == QUEUED_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }
}
