//! What a [`LocalAuthority`](super::LocalAuthority) does wrong, and when.

use std::time::Duration;

use freshtoken_core::Timestamp;

/// How a fault answer states its `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAfter {
    /// `Retry-After: <seconds>`.
    Seconds(u64),
    /// `Retry-After: <HTTP date>`.
    Date(Timestamp),
}

/// One way to fail a token request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// `503 Service Unavailable` with a `temporarily_unavailable` body.
    Unavailable {
        /// The `Retry-After` header to send, if any.
        retry_after: Option<RetryAfter>,
    },
    /// `429 Too Many Requests` with a `slow_down` body.
    RateLimited {
        /// The `Retry-After` header to send, if any.
        retry_after: Option<RetryAfter>,
    },
    /// Wait this long, then answer normally (a slow authority; with a
    /// client timeout shorter than this, a timeout).
    Hang(Duration),
    /// `200 OK` with a body that is not JSON.
    MalformedJson,
    /// Close the connection without answering. This needs the client to
    /// have sent `Connection: close`, as the built-in transport does; with
    /// a keep-alive client it looks like a hang until the client times out.
    CloseConnection,
    /// Answer normally, but with this `expires_in` (zero, negative, or a
    /// lifetime other than the token's): a degenerate authority. The token
    /// itself (and its JWT `exp`) lives the configured lifetime.
    ExpiresIn(i64),
    /// An RFC 6749 error answer, e.g. `400 invalid_grant`.
    Error {
        /// The HTTP status.
        status: u16,
        /// The `error` code.
        code: String,
    },
}

/// When a [`Fault`] applies.
///
/// ```
/// use freshtoken::testing::{Fault, FaultWindow, LocalAuthority};
/// use freshtoken::{Clock, SystemClock};
/// use std::time::Duration;
///
/// let authority = LocalAuthority::builder().client("app", "secret").start().unwrap();
/// // An outage from 10 s to 25 s from now, on the authority's clock.
/// let from = SystemClock.now() + Duration::from_secs(10);
/// authority.add_fault(
///     Fault::Unavailable { retry_after: None },
///     FaultWindow::Between { from, until: from + Duration::from_secs(15) },
/// );
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultWindow {
    /// To the next `n` token requests, then never again.
    NextRequests(u32),
    /// To requests arriving in `[from, until)` on the authority's clock.
    Between {
        /// Start, inclusive.
        from: Timestamp,
        /// End, exclusive.
        until: Timestamp,
    },
    /// To every request until the plan is changed.
    Always,
}

/// A fault with its window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRule {
    /// What goes wrong.
    pub fault: Fault,
    /// When.
    pub window: FaultWindow,
}

/// An ordered list of faults: a token request gets the first rule whose
/// window covers it (a [`FaultWindow::NextRequests`] rule counts down only
/// when it is the one applied); no rule, a normal answer.
///
/// ```
/// use freshtoken::testing::{Fault, FaultPlan, FaultWindow, RetryAfter};
/// use std::time::Duration;
///
/// let plan = FaultPlan::new()
///     .with(Fault::RateLimited { retry_after: Some(RetryAfter::Seconds(2)) }, FaultWindow::NextRequests(1))
///     .with(Fault::Hang(Duration::from_millis(300)), FaultWindow::NextRequests(2));
/// assert_eq!(plan.rules().len(), 2);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    rules: Vec<FaultRule>,
}

impl FaultPlan {
    /// An empty plan: every request is answered normally.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule after the existing ones.
    pub fn with(mut self, fault: Fault, window: FaultWindow) -> Self {
        self.rules.push(FaultRule { fault, window });
        self
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[FaultRule] {
        &self.rules
    }

    /// The fault for a request arriving at `now`, consuming one use of a
    /// counted rule.
    pub(crate) fn take(&mut self, now: Timestamp) -> Option<Fault> {
        let index = self.rules.iter().position(|r| match r.window {
            FaultWindow::NextRequests(n) => n > 0,
            FaultWindow::Between { from, until } => from <= now && now < until,
            FaultWindow::Always => true,
        })?;
        let rule = &mut self.rules[index];
        if let FaultWindow::NextRequests(n) = &mut rule.window {
            *n -= 1;
        }
        Some(rule.fault.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_applies_and_counts_down() {
        let t = Timestamp::from_secs;
        let mut plan = FaultPlan::new()
            .with(Fault::MalformedJson, FaultWindow::NextRequests(1))
            .with(
                Fault::CloseConnection,
                FaultWindow::Between {
                    from: t(10),
                    until: t(20),
                },
            );
        assert_eq!(plan.take(t(15)), Some(Fault::MalformedJson));
        assert_eq!(plan.take(t(15)), Some(Fault::CloseConnection));
        assert_eq!(plan.take(t(20)), None);
        assert_eq!(plan.take(t(5)), None);
    }
}
