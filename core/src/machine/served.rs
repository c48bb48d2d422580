//! What readers are served: the current token, its publication, its
//! expiry, and the refresh a rejection (a 401) asks for.

use super::*;

/// What readers are served, across refreshes: the current token and when
/// its times count from, what readers asked of it (a validity, a
/// rejection), the notes published with it, and how renewal is going.
///
/// In a fixed order (`repr(C)`, see the layout note on [`RefreshMachine`]):
/// what the timers read on every input first, what a publication reads
/// after it.
#[derive(Debug, Clone)]
#[repr(C)]
pub(super) struct Served {
    /// The token readers are served.
    pub(super) current: Option<Arc<Token>>,
    /// When, on both clocks, the current token's times count from (see
    /// [`RefreshMachine::token_now`]).
    pub(super) anchor: Option<Now>,
    /// Whether readers have been told that `current` expired.
    pub(super) expiry_published: bool,
    /// Consecutive degenerate answers.
    pub(super) degenerate_streak: u32,
    /// The token a consumer reported as rejected; never re-adopted.
    pub(super) rejected: Option<TokenId>,
    /// A reader needs a token valid this long, which the current one is not
    /// ([`Input::NeedValidity`]); until a new token is served.
    pub(super) wanted: Option<Duration>,
    /// How renewal is going (see [`StateCell`]).
    pub(super) state: StateCell,
    pub(super) skew_ms: Option<i64>,
    pub(super) lifetime_note: Option<LifetimeNote>,
    pub(super) last_invalidation: Option<MonoTime>,
    /// The current token came from a degenerate answer: how it was re-timed.
    /// (Boxed, as rare: see [`RefreshMachine`]'s `follow_up`.)
    pub(super) degenerate: Option<Box<(TokenId, DegenerateLifetime)>>,
    /// Why the last store failed, until one succeeds. (Boxed, as rare.)
    pub(super) store_error: Option<Box<CacheError>>,
}

impl Default for Served {
    fn default() -> Self {
        Served {
            current: None,
            anchor: None,
            wanted: None,
            expiry_published: false,
            rejected: None,
            last_invalidation: None,
            state: StateCell::Starting,
            skew_ms: None,
            lifetime_note: None,
            degenerate: None,
            degenerate_streak: 0,
            store_error: None,
        }
    }
}

/// A [`RefreshState`], with the states that carry no error inline and the
/// others boxed: 16 bytes instead of 88. Every publication reads it, and
/// nearly always finds `Healthy`; inline, the 72 bytes of an error that is
/// nearly never there put the rest of what a publication reads on one
/// more of the processor's cache lines (see [`RefreshMachine`]'s layout).
#[derive(Debug, Clone)]
pub(super) enum StateCell {
    Starting,
    Healthy,
    Stopped,
    /// `Retrying` or `Failed`.
    Failing(Box<RefreshState>),
}

impl StateCell {
    /// The state.
    #[inline]
    pub(super) fn get(&self) -> &RefreshState {
        static STARTING: RefreshState = RefreshState::Starting;
        static HEALTHY: RefreshState = RefreshState::Healthy;
        static STOPPED: RefreshState = RefreshState::Stopped;
        match self {
            StateCell::Starting => &STARTING,
            StateCell::Healthy => &HEALTHY,
            StateCell::Stopped => &STOPPED,
            StateCell::Failing(state) => state,
        }
    }

    /// Makes it `state`. (Always inlined: each caller sets one state,
    /// which then reduces to a store.)
    #[inline(always)]
    pub(super) fn set(&mut self, state: RefreshState) {
        *self = match state {
            RefreshState::Starting => StateCell::Starting,
            RefreshState::Healthy => StateCell::Healthy,
            RefreshState::Stopped => StateCell::Stopped,
            failing => StateCell::Failing(Box::new(failing)),
        };
    }
}

impl Served {
    /// Serves `token`, its times counting from `anchor`.
    fn make_current(&mut self, token: Arc<Token>, anchor: Now) {
        if Some(token.id()) != self.rejected {
            self.rejected = None;
        }
        self.expiry_published = false;
        self.current = Some(token);
        self.anchor = Some(anchor);
        self.wanted = None;
    }

    /// The degenerate record, if it is the current token's (an adopted
    /// token or a late answer may have replaced the one it was made for).
    pub(super) fn degenerate_of_current(&self) -> Option<DegenerateLifetime> {
        let (id, d) = *self.degenerate.as_deref()?;
        (self.current.as_ref()?.id() == id).then_some(d)
    }

    /// Whether `id` is the token a reader rejected.
    pub(super) fn is_rejected(&self, id: TokenId) -> bool {
        self.rejected == Some(id)
    }
}

impl RefreshMachine {
    pub(super) fn invalidate(&mut self, id: TokenId) {
        let is_current = self.served.current.as_ref().is_some_and(|t| t.id() == id);
        if !is_current {
            // A token a refresh has already replaced.
            return self.emit(Event::Invalidation(InvalidationOutcome::Collapsed));
        }
        if matches!(
            self.phase,
            Phase::Created | Phase::Failed { .. } | Phase::Draining { .. }
        ) {
            return self.emit(Event::Invalidation(InvalidationOutcome::Ignored));
        }
        self.served.rejected = Some(id);
        if let Phase::Idle { refresh_at, .. } = self.phase {
            // Rate limited: at the earliest one interval after the last
            // one. Due now, the timers' pass after this input starts it.
            let early = self.invalidation_allowed_at();
            self.phase = Phase::Idle { refresh_at, early };
            self.emit(Event::Invalidation(if early <= self.now.mono {
                InvalidationOutcome::Accepted
            } else {
                InvalidationOutcome::RateLimited
            }));
        } else {
            self.emit(Event::Invalidation(InvalidationOutcome::Collapsed));
        }
        // Otherwise a refresh is under way or scheduled by the backoff; it
        // will replace the token and must not adopt this one again. If it
        // ends with this token still current (a store in flight when the
        // 401 came), `idle_until_refresh` refreshes early.
    }

    /// A reader needs the token valid for `needed` more (see
    /// [`Input::NeedValidity`]). Idle with a token that is not, refresh as
    /// early as the invalidation limit allows; a token whose whole life is
    /// shorter than `needed` says the authority's tokens cannot be, and
    /// asking again would only add load. A refresh under way brings a new
    /// token anyway.
    pub(super) fn need_validity(&mut self, needed: Duration) {
        let Phase::Idle { refresh_at, .. } = self.phase else {
            return;
        };
        let Some(t) = &self.served.current else {
            return;
        };
        let left = t.expires_at().saturating_duration_since(self.token_now());
        if left >= needed || t.lifetime() < needed {
            return;
        }
        self.served.wanted = Some(needed);
        self.phase = Phase::Idle {
            refresh_at,
            early: self.invalidation_allowed_at(),
        };
    }

    pub(super) fn invalidation_allowed_at(&self) -> MonoTime {
        self.served
            .last_invalidation
            // At least a millisecond: with a zero interval, an authority
            // that hands back the rejected token would otherwise make the
            // machine refresh again and again within one instant.
            .map_or(self.now.mono, |last| {
                last + self
                    .config
                    .invalidate_interval
                    .max(Duration::from_millis(1))
            })
    }

    /// Back to idle after a refresh, until the current token's (jittered)
    /// refresh time, or sooner if a consumer rejected it meanwhile.
    pub(super) fn idle_until_refresh(&mut self) {
        let degenerate = self.degenerate_of_current().is_some();
        let refresh_at = match &self.served.current {
            // Re-timed by the floor, with its own jitter above it: jitter
            // below `stale_at` would undercut the floor.
            Some(token) if degenerate => token.stale_at(),
            Some(token) => self.config.jitter.refresh_at(token, &mut self.rng),
            // Unreachable in practice (settling follows a fetch or an
            // adoption); retry after a pause rather than spin.
            None => self.now.wall + self.config.peer_wait,
        };
        self.idle_until(refresh_at);
        let rejected = self
            .served
            .current
            .as_ref()
            .is_some_and(|t| self.served.is_rejected(t.id()));
        if rejected {
            // Due already (the rate limit allows it), the timers' pass
            // refreshes now.
            self.phase = Phase::Idle {
                refresh_at,
                early: self.invalidation_allowed_at(),
            };
        }
    }

    /// Idle after an answer no newer than our token: ask again after a
    /// quarter of its remaining life, at least the refresh floor after now,
    /// and at its expiry at the latest. An authority that hands back the
    /// same cached token with its life counted down (as cloud metadata
    /// servers do near its end) costs a few requests, not a storm.
    pub(super) fn idle_after_no_newer(&mut self) {
        let now = self.token_now();
        let left = self.served.current.as_ref().map_or(Duration::ZERO, |t| {
            t.expires_at().saturating_duration_since(now)
        });
        let wait = (left / 4).max(self.config.min_refresh_interval).min(left);
        self.idle_until(now + wait.max(Duration::from_millis(1)));
    }

    pub(super) fn idle_until(&mut self, refresh_at: Timestamp) {
        self.attempt.peer_wait = None;
        self.phase = Phase::Idle {
            refresh_at,
            early: MonoTime::MAX,
        };
    }

    /// Serves `token`, whose wall-clock times count from `anchor` (the
    /// sending of the fetch that brought it, or now for an adopted one).
    pub(super) fn make_current(&mut self, token: Arc<Token>, anchor: Now) {
        self.served.make_current(token, anchor);
    }

    /// The time the current token is judged by: the wall clock, or the
    /// token's anchor advanced by the monotonic clock when that is later
    /// (see [`Now::token_clock`]). A wall clock stepped back never stretches
    /// the token's life; one stepped forward ages it at once.
    pub(super) fn token_now(&self) -> Timestamp {
        self.served
            .anchor
            .map_or(self.now.wall, |anchor| self.now.token_clock(anchor))
    }

    /// The wall-clock deadline (what [`Output::Timeout`] speaks in) at
    /// which the current token's clock reaches `at`.
    pub(super) fn token_deadline(&self, at: Timestamp) -> Timestamp {
        if at == Timestamp::MAX {
            return Timestamp::MAX;
        }
        self.now.wall + at.saturating_duration_since(self.token_now())
    }

    /// The current token's life on the monotonic clock, as seen now.
    pub(super) fn life(&self) -> Option<MonoLife> {
        let (token, anchor) = (self.served.current.as_ref()?, self.served.anchor?);
        Some(MonoLife {
            stale_at: self.mono_point(token.stale_at(), anchor),
            expires_at: self.mono_point(token.expires_at(), anchor),
        })
    }

    /// When, on the monotonic clock, a token clock anchored at `anchor`
    /// reaches `at` (now, if it has): the earlier of the wall clock's and
    /// the anchor's reckoning, as [`Now::token_clock`] judges.
    fn mono_point(&self, at: Timestamp, anchor: Now) -> MonoTime {
        if at == Timestamp::MAX {
            return MonoTime::MAX;
        }
        self.now.mono + at.saturating_duration_since(self.now.token_clock(anchor))
    }

    /// Whether `token` (from the cache, or a late answer), its times
    /// counting from `anchor`, should replace ours: it is valid, not the
    /// one a consumer rejected nor ours again, and lives longer than ours.
    ///
    /// Lives are compared on the monotonic clock, each from its own
    /// anchor: wall-clock times stamped before and after a step of the
    /// wall clock do not compare (after a step back, a fresh answer's times
    /// are earlier than those of the token it replaces).
    pub(super) fn is_better(&self, token: &Token, anchor: Now) -> bool {
        token.is_valid_at(self.now.token_clock(anchor))
            && !self.served.is_rejected(token.id())
            && self
                .served
                .current
                .as_ref()
                .is_none_or(|ours| ours.id() != token.id())
            && self
                .life()
                .is_none_or(|ours| self.mono_point(token.expires_at(), anchor) > ours.expires_at)
    }

    /// Tells readers when the current token expires (once per token).
    pub(super) fn check_expiry(&mut self) {
        let expired = self
            .served
            .current
            .as_ref()
            .is_some_and(|t| !t.is_valid_at(self.token_now()));
        if expired && self.expiry_to_publish() {
            self.served.expiry_published = true;
            self.publish();
        }
    }

    /// Whether readers are yet to be told that the current token expired:
    /// not once told, not after `Stop`, and not while the token waits for
    /// its store to be published at all (a rotated refresh token is made
    /// durable first; a clock stepped forward may expire it meanwhile).
    pub(super) fn expiry_to_publish(&self) -> bool {
        let awaits_store = |r: &Request| {
            matches!(&r.kind, RequestKind::Store { token, publish_after: true, .. }
                if self.served.current.as_ref().is_some_and(|c| c.id() == token.id()))
        };
        let deferred = match &self.phase {
            Phase::Waiting(r) | Phase::Draining { request: r, .. } => awaits_store(r),
            _ => false,
        } || self
            .follow_up
            .as_ref()
            .is_some_and(|f| matches!(f.store_for, StoreFor::RotatedThenPublish));
        !self.served.expiry_published && !self.is_stopped() && !deferred
    }

    pub(super) fn publish(&mut self) {
        self.outbox.push_back(Action::Publish(Arc::new(Snapshot {
            token: self.served.current.clone(),
            state: self.served.state.get().clone(),
            published_at: self.now.wall,
            tokens_fetched: self.stats.tokens_fetched,
            store_error: self.served.store_error.as_deref().cloned(),
            skew_ms: self.served.skew_ms,
            lifetime_note: self.served.lifetime_note,
            degenerate: self.degenerate_of_current(),
            life: self.life(),
        })));
    }

    /// Whether the current token is due for renewal: there is none, a
    /// reader rejected it, it expired, or it is in the second half of its
    /// fresh period (where any jitter puts its refresh time).
    pub(super) fn refresh_due(&self) -> bool {
        let Some(t) = &self.served.current else {
            return true;
        };
        let now = self.token_now();
        if self.served.is_rejected(t.id()) || !t.is_valid_at(now) {
            return true;
        }
        let left = t.expires_at().saturating_duration_since(now);
        if self.served.wanted.is_some_and(|needed| left < needed) {
            return true;
        }
        let fresh = t.stale_at().saturating_duration_since(t.issued_at());
        now >= t.stale_at() - fresh / 2
    }

    /// Whether the current token (valid, not rejected) outlives `token`,
    /// whose times count from `anchor` (compared as in
    /// [`is_better`](Self::is_better)).
    pub(super) fn current_outlives(&self, token: &Token, anchor: Now) -> bool {
        let (Some(c), Some(life)) = (&self.served.current, self.life()) else {
            return false;
        };
        life.expires_at > self.mono_point(token.expires_at(), anchor)
            && !self.served.is_rejected(c.id())
            && c.is_valid_at(self.token_now())
    }
}
