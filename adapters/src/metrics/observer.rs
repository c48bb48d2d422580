//! The drivers' observer: it watches what the engine feeds the machine,
//! what the machine asks for and publishes, and turns that into metrics
//! and one tracing span per refresh attempt.
//!
//! It changes nothing in the machine: outcomes the inputs alone do not tell
//! (a timeout, a dead answer, what became of an invalidation, an adoption)
//! come from the machine's [`Event`]s, which the refresher hands it after
//! each input.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use freshtoken_core::{
    Action, Event, FetchErrorKind, Input, InvalidationOutcome, LeaseOutcome, Now, RefreshState,
    RequestId, Snapshot, Timestamp,
};
use tracing::field::Empty;
use tracing::span::EnteredSpan;
use tracing::Span;

use super::sink::{Gauges, Sink, State};

/// Fetches remembered at once: the one the machine waits for and a few it
/// gave up on (their late answers still count in the histogram). A source
/// that never answers must not grow this without bound.
const IN_FLIGHT: usize = 8;

/// A fetch that was asked for and not answered yet.
#[derive(Debug)]
struct InFlight {
    id: RequestId,
    started: Instant,
    span: Span,
    /// The machine gave up on it at its deadline (counted as a timeout).
    timed_out: bool,
}

/// What [`Observer::before_input`] saw, for [`Observer::after_input`].
#[derive(Debug)]
pub(crate) struct Seen {
    what: What,
    /// The refresh span, entered while the machine handles its answer, so
    /// the warnings and the "refreshed" event are inside it.
    entered: Option<EnteredSpan>,
}

#[derive(Debug)]
enum What {
    Fetched {
        id: RequestId,
        error: Option<FetchErrorKind>,
    },
    Lease(&'static str),
    Other,
}

/// The observer of one driver (one refresher).
#[derive(Debug)]
pub(crate) struct Observer {
    name: Arc<str>,
    sink: Sink,
    fetches: VecDeque<InFlight>,
    /// The fetch whose answer the machine found dead on arrival, while it
    /// handles that answer.
    dead_on_arrival: Option<RequestId>,
    /// The last snapshot published.
    snapshot: Option<Arc<Snapshot>>,
    state: State,
    failures: u32,
    skew_ms: Option<i64>,
}

impl Observer {
    pub(crate) fn new(name: Arc<str>) -> Self {
        Observer {
            sink: Sink::new(&name),
            name,
            fetches: VecDeque::new(),
            dead_on_arrival: None,
            snapshot: None,
            state: State::Starting,
            failures: 0,
            skew_ms: None,
        }
    }

    /// Before the machine handles `input`.
    pub(crate) fn before_input(&mut self, input: &Input) -> Seen {
        let mut entered = None;
        let what = match input {
            Input::Fetched(id, result) => {
                if let Some(f) = self.fetches.iter().find(|f| f.id == *id) {
                    entered = Some(f.span.clone().entered());
                }
                What::Fetched {
                    id: *id,
                    error: result.as_ref().err().map(|e| e.kind()),
                }
            }
            Input::Lease(_, result) => What::Lease(match result {
                Ok(LeaseOutcome::Granted) => "granted",
                Ok(LeaseOutcome::Busy) => "busy",
                Ok(LeaseOutcome::Unsupported) => "unsupported",
                Err(_) => "error",
            }),
            _ => What::Other,
        };
        Seen { what, entered }
    }

    /// An event of the machine's, drained after an input.
    pub(crate) fn on_event(&mut self, event: &Event) {
        match event {
            Event::TimedOut { id, fetch: true } => self.timed_out(*id),
            Event::DeadOnArrival { id } => self.dead_on_arrival = Some(*id),
            Event::Invalidation(outcome) => self.sink.invalidation(match outcome {
                InvalidationOutcome::Accepted => "accepted",
                InvalidationOutcome::RateLimited => "rate_limited",
                InvalidationOutcome::Collapsed => "collapsed",
                _ => "ignored",
            }),
            Event::Adopted { .. } => self.sink.adoptions(1),
            _ => {}
        }
    }

    /// After the machine handled the input of `seen`, at `now`.
    /// After the machine handled the input of `seen` (and its events were
    /// handed to [`on_event`](Self::on_event)), at `now`.
    pub(crate) fn after_input(&mut self, seen: Seen, now: Now) {
        match seen.what {
            What::Fetched { id, error } => self.answered(id, error),
            What::Lease(outcome) => self.sink.lease(outcome),
            What::Other => {}
        }
        self.dead_on_arrival = None;
        drop(seen.entered);
        self.update(now);
    }

    /// A fetch's answer came (in time or late).
    fn answered(&mut self, id: RequestId, error: Option<FetchErrorKind>) {
        let Some(at) = self.fetches.iter().position(|f| f.id == id) else {
            return;
        };
        let fetch = self.fetches.remove(at).expect("position is in range");
        let seconds = fetch.started.elapsed().as_secs_f64();
        let (outcome, error) = match error {
            Some(kind) => ("error", kind_label(kind)),
            // A token that expired before its answer arrived is a failure.
            None if self.dead_on_arrival == Some(id) && !fetch.timed_out => {
                ("error", "dead_on_arrival")
            }
            None => ("success", "none"),
        };
        self.sink.fetch_duration(outcome, seconds);
        if fetch.timed_out {
            // Counted as a timeout already; the late answer only adds its
            // duration.
            fetch.span.record("late", true);
            return;
        }
        self.sink.fetch(outcome, error);
        fetch.span.record("outcome", outcome);
        if error != "none" {
            fetch.span.record("error", error);
        }
        fetch
            .span
            .record("duration_ms", (seconds * 1000.0).round() as u64);
    }

    /// The machine gave up on fetch `id`.
    fn timed_out(&mut self, id: RequestId) {
        if let Some(fetch) = self.fetches.iter_mut().find(|f| f.id == id) {
            fetch.timed_out = true;
            self.sink.fetch("error", "timeout");
            let ms = (fetch.started.elapsed().as_secs_f64() * 1000.0).round() as u64;
            fetch.span.record("outcome", "error");
            fetch.span.record("error", "timeout");
            fetch.span.record("duration_ms", ms);
            tracing::debug!(parent: &fetch.span, "gave up on the fetch at its deadline");
        }
    }

    /// An action the machine asked for, at `now`.
    pub(crate) fn on_action(&mut self, action: &Action, now: Now) {
        match action {
            Action::Fetch(request) => {
                if request.attempt > 1 {
                    self.sink.retry();
                }
                let span = tracing::info_span!(
                    "freshtoken.refresh",
                    refresher = %self.name,
                    attempt = request.attempt,
                    outcome = Empty,
                    error = Empty,
                    duration_ms = Empty,
                    late = Empty,
                );
                if self.fetches.len() == IN_FLIGHT {
                    self.fetches.pop_front();
                }
                self.fetches.push_back(InFlight {
                    id: request.id,
                    started: Instant::now(),
                    span,
                    timed_out: false,
                });
            }
            Action::Publish(snapshot) => self.on_publish(snapshot, now),
            _ => {}
        }
    }

    fn on_publish(&mut self, snapshot: &Arc<Snapshot>, now: Now) {
        self.snapshot = Some(snapshot.clone());
        let (state, failures) = match &snapshot.state {
            RefreshState::Starting => (State::Starting, self.failures),
            RefreshState::Healthy => (State::Healthy, 0),
            RefreshState::Retrying { attempt, .. } => (State::Retrying, *attempt),
            // The revocation is one more failure.
            RefreshState::Failed { .. } => (State::Failed, self.failures.saturating_add(1)),
            RefreshState::Stopped => (State::Stopped, self.failures),
            // A state added to the core later (the enum is non-exhaustive):
            // the gauges keep what they show.
            _ => (self.state, self.failures),
        };
        if !(state == State::Failed && self.state == State::Failed) {
            self.failures = failures;
        }
        self.state = state;
        if snapshot.skew_ms.is_some() {
            self.skew_ms = snapshot.skew_ms;
        }
        self.update(now);
    }

    /// Sets the gauges for `now`: called after every input (ticks and
    /// heartbeats included) and every publication, so the "seconds until"
    /// gauges count down between refreshes.
    fn update(&self, now: Now) {
        self.sink.gauges(&self.gauges(now));
    }

    /// The gauges at `now`, judged by both clocks as readers judge the
    /// token (a wall clock stepped back does not make an expired token
    /// look valid); the `_at` gauges are the token's own wall-clock times.
    pub(crate) fn gauges(&self, now: Now) -> Gauges {
        let token = self
            .snapshot
            .as_ref()
            .and_then(|s| Some((s, s.token.as_ref()?)));
        let (stale_in, expires_in, stale_at, expires_at, valid) = match token {
            Some((s, t)) => {
                let by_mono = s
                    .life
                    .map(|l| l.stale_at.saturating_duration_since(now.mono));
                let stale_in = match by_mono {
                    Some(m) if t.stale_at() != Timestamp::MAX => m
                        .min(t.stale_at().saturating_duration_since(now.wall))
                        .as_secs_f64(),
                    _ => seconds_until(t.stale_at(), now.wall),
                };
                let expires_in = if t.expires_at() == Timestamp::MAX {
                    f64::INFINITY
                } else {
                    s.valid_for(now).as_secs_f64()
                };
                (
                    stale_in,
                    expires_in,
                    timestamp_seconds(t.stale_at()),
                    timestamp_seconds(t.expires_at()),
                    s.is_valid_at(now),
                )
            }
            None => (0.0, 0.0, 0.0, 0.0, false),
        };
        Gauges {
            stale_in,
            expires_in,
            stale_at,
            expires_at,
            valid,
            state: self.state,
            consecutive_failures: self.failures,
            skew_seconds: self.skew_ms.map(|ms| ms as f64 / 1000.0),
        }
    }
}

/// The `error` label of a fetch error kind.
fn kind_label(kind: FetchErrorKind) -> &'static str {
    match kind {
        FetchErrorKind::Transient => "transient",
        FetchErrorKind::RateLimited => "rate_limited",
        FetchErrorKind::Permanent => "permanent",
        FetchErrorKind::GrantRevoked => "grant_revoked",
        // A kind added to the core later (the enum is non-exhaustive).
        _ => "other",
    }
}

/// Seconds from `now` to `at`, 0 once it has passed; +Inf for "never".
fn seconds_until(at: Timestamp, now: Timestamp) -> f64 {
    if at == Timestamp::MAX {
        return f64::INFINITY;
    }
    at.saturating_duration_since(now).as_secs_f64()
}

/// A timestamp as Unix seconds; +Inf for "never".
fn timestamp_seconds(at: Timestamp) -> f64 {
    if at == Timestamp::MAX {
        return f64::INFINITY;
    }
    at.as_millis() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshtoken_core::{
        AccessToken, MachineConfig, MonoTime, Output, RefreshMachine, TokenResponse,
    };

    /// Issue 25: the gauges judge the token by both clocks, as readers
    /// do: with the wall clock stepped back 120 s, a 60 s token is shown
    /// expired at its real expiry, not 120 s later.
    #[test]
    fn the_gauges_judge_the_token_by_both_clocks() {
        let t0 = Now::new(Timestamp::from_secs(1_000), MonoTime::ZERO);
        let mut m = RefreshMachine::new(MachineConfig::default());
        m.handle_input(Input::Start, t0);
        let Output::Action(Action::Fetch(request)) = m.poll_output() else {
            panic!("a fetch")
        };
        let answer = TokenResponse::new(AccessToken::new("at")).with_expires_in(Some(60));
        m.handle_input(Input::Fetched(request.id, Ok(answer)), t0);
        let Output::Action(publish @ Action::Publish(_)) = m.poll_output() else {
            panic!("a publication")
        };
        let mut observer = Observer::new("gauges".into());
        observer.on_action(&publish, t0);
        let stepped = |mono_secs: u64| {
            Now::new(
                Timestamp::from_secs(1_000 + mono_secs - 120),
                MonoTime::from_millis(mono_secs * 1_000),
            )
        };
        let g = observer.gauges(stepped(30));
        assert!(g.valid);
        assert_eq!(g.expires_in, 30.0);
        let g = observer.gauges(stepped(61));
        assert!(!g.valid, "expired by the monotonic clock");
        assert_eq!(g.expires_in, 0.0);
        assert_eq!(g.stale_in, 0.0);
    }
}
