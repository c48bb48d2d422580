//! Where the observer's numbers go: the `metrics` facade with the feature,
//! nowhere without it (the observer still opens its tracing spans).

#[cfg(not(feature = "metrics"))]
use super::CacheOp;

/// The gauges of one refresher, as of one reading of the clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Gauges {
    pub(crate) stale_in: f64,
    pub(crate) expires_in: f64,
    pub(crate) stale_at: f64,
    pub(crate) expires_at: f64,
    pub(crate) valid: bool,
    pub(crate) state: State,
    pub(crate) consecutive_failures: u32,
    pub(crate) skew_seconds: Option<f64>,
}

/// The refresh states, as the `state` label of `freshtoken_refresh_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Starting,
    Healthy,
    Retrying,
    Failed,
    Stopped,
}

impl State {
    pub(crate) const ALL: [State; 5] = [
        State::Starting,
        State::Healthy,
        State::Retrying,
        State::Failed,
        State::Stopped,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Healthy => "healthy",
            State::Retrying => "retrying",
            State::Failed => "failed",
            State::Stopped => "stopped",
        }
    }

    /// The value of `freshtoken_refresh_state_code`.
    pub(crate) fn code(self) -> f64 {
        match self {
            State::Starting => 0.0,
            State::Healthy => 1.0,
            State::Retrying => 2.0,
            State::Failed => 3.0,
            State::Stopped => 4.0,
        }
    }
}

#[cfg(feature = "metrics")]
mod real {
    use std::sync::Arc;

    use metrics::{counter, gauge, histogram, SharedString};

    use super::{Gauges, State};
    use crate::metrics::{names, CacheOp};

    /// Records one refresher's metrics through the `metrics` facade. The
    /// macros look the metric up in the installed recorder at every call,
    /// so a recorder installed after the driver started still gets them.
    #[derive(Debug, Clone)]
    pub(crate) struct Sink {
        refresher: SharedString,
    }

    impl Sink {
        pub(crate) fn new(refresher: &Arc<str>) -> Self {
            super::super::describe();
            Sink {
                refresher: SharedString::from(refresher.clone()),
            }
        }

        fn r(&self) -> SharedString {
            self.refresher.clone()
        }

        pub(crate) fn fetch(&self, outcome: &'static str, error: &'static str) {
            counter!(names::FETCHES_TOTAL, "refresher" => self.r(), "outcome" => outcome, "error" => error)
                .increment(1);
        }

        pub(crate) fn fetch_duration(&self, outcome: &'static str, seconds: f64) {
            histogram!(names::FETCH_DURATION_SECONDS, "refresher" => self.r(), "outcome" => outcome)
                .record(seconds);
        }

        pub(crate) fn retry(&self) {
            counter!(names::FETCH_RETRIES_TOTAL, "refresher" => self.r()).increment(1);
        }

        pub(crate) fn lease(&self, outcome: &'static str) {
            counter!(names::LEASE_REQUESTS_TOTAL, "refresher" => self.r(), "outcome" => outcome)
                .increment(1);
        }

        pub(crate) fn invalidation(&self, outcome: &'static str) {
            counter!(names::INVALIDATIONS_TOTAL, "refresher" => self.r(), "outcome" => outcome)
                .increment(1);
        }

        pub(crate) fn adoptions(&self, n: u64) {
            counter!(names::TOKENS_ADOPTED_TOTAL, "refresher" => self.r()).increment(n);
        }

        pub(crate) fn gauges(&self, g: &Gauges) {
            let r = self.r();
            gauge!(names::TOKEN_STALE_IN_SECONDS, "refresher" => r.clone()).set(g.stale_in);
            gauge!(names::TOKEN_EXPIRES_IN_SECONDS, "refresher" => r.clone()).set(g.expires_in);
            gauge!(names::TOKEN_STALE_AT_TIMESTAMP_SECONDS, "refresher" => r.clone())
                .set(g.stale_at);
            gauge!(names::TOKEN_EXPIRES_AT_TIMESTAMP_SECONDS, "refresher" => r.clone())
                .set(g.expires_at);
            gauge!(names::TOKEN_VALID, "refresher" => r.clone()).set(f64::from(u8::from(g.valid)));
            for state in State::ALL {
                gauge!(names::REFRESH_STATE, "refresher" => r.clone(), "state" => state.label())
                    .set(f64::from(u8::from(state == g.state)));
            }
            gauge!(names::REFRESH_STATE_CODE, "refresher" => r.clone()).set(g.state.code());
            gauge!(names::REFRESH_CONSECUTIVE_FAILURES, "refresher" => r.clone())
                .set(f64::from(g.consecutive_failures));
            if let Some(skew) = g.skew_seconds {
                gauge!(names::CLOCK_SKEW_SECONDS, "refresher" => r).set(skew);
            }
        }
    }

    /// Counts one operation on one cache layer.
    pub(crate) fn cache_op(
        refresher: &Arc<str>,
        layer: &'static str,
        position: usize,
        op: CacheOp,
        outcome: &'static str,
    ) {
        counter!(
            names::CACHE_OPERATIONS_TOTAL,
            "refresher" => SharedString::from(refresher.clone()),
            "layer" => layer,
            "position" => position_label(position),
            "operation" => op.label(),
            "outcome" => outcome,
        )
        .increment(1);
    }

    /// Layer positions as labels, without an allocation for the usual few.
    fn position_label(position: usize) -> SharedString {
        const FEW: [&str; 8] = ["0", "1", "2", "3", "4", "5", "6", "7"];
        match FEW.get(position) {
            Some(p) => SharedString::const_str(p),
            None => SharedString::from(position.to_string()),
        }
    }
}

#[cfg(feature = "metrics")]
pub(crate) use real::{cache_op, Sink};

/// Without the `metrics` feature: nothing is recorded.
#[cfg(not(feature = "metrics"))]
#[derive(Debug, Clone)]
pub(crate) struct Sink;

#[cfg(not(feature = "metrics"))]
impl Sink {
    pub(crate) fn new(_refresher: &std::sync::Arc<str>) -> Self {
        Sink
    }
    pub(crate) fn fetch(&self, _outcome: &'static str, _error: &'static str) {}
    pub(crate) fn fetch_duration(&self, _outcome: &'static str, _seconds: f64) {}
    pub(crate) fn retry(&self) {}
    pub(crate) fn lease(&self, _outcome: &'static str) {}
    pub(crate) fn invalidation(&self, _outcome: &'static str) {}
    pub(crate) fn adoptions(&self, _n: u64) {}
    pub(crate) fn gauges(&self, _g: &Gauges) {}
}

#[cfg(not(feature = "metrics"))]
pub(crate) fn cache_op(
    _refresher: &std::sync::Arc<str>,
    _layer: &'static str,
    _position: usize,
    _op: CacheOp,
    _outcome: &'static str,
) {
}
