//! The grant: the newest refresh token known and its generation, the
//! fetches given up on (whose late answers still teach it), and how an
//! answer becomes a token (its lifetime resolved, a degenerate one floored).

use super::*;

/// Where the refresh token we would present came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Configured,
    Cache,
    Answer,
}

/// The newest refresh token known.
#[derive(Debug, Clone)]
pub(super) struct Grant {
    pub(super) token: HeldRefreshToken,
    pub(super) generation: u64,
    pub(super) origin: Origin,
}

/// A refresh token the machine holds: the configured one, or one learned
/// with a token (from the cache or an answer), kept inside that token
/// rather than copied out of it. The token is shared with the cache and
/// with every peer that read it, so comparing a cached token's refresh
/// token with ours reads memory they all read; a copy per machine was an
/// allocation per token learned, and a cache miss of its own per compare
/// in a large simulated fleet.
#[derive(Debug, Clone)]
pub(super) enum HeldRefreshToken {
    Configured(RefreshToken),
    /// Inside this token, which has one (see [`HeldRefreshToken::of`]).
    In(Arc<Token>),
}

impl HeldRefreshToken {
    /// `token`'s refresh token, if it has one.
    pub(super) fn of(token: &Arc<Token>) -> Option<Self> {
        token
            .refresh_token()
            .is_some()
            .then(|| HeldRefreshToken::In(token.clone()))
    }

    pub(super) fn get(&self) -> &RefreshToken {
        match self {
            HeldRefreshToken::Configured(rt) => rt,
            HeldRefreshToken::In(token) => token
                .refresh_token()
                .expect("only a token with a refresh token is held"),
        }
    }
}

/// The grant, across refreshes: the newest refresh token known, the one
/// the authority revoked, and the fetches given up on (whose late answers
/// still teach it).
#[derive(Debug, Clone, Default)]
pub(super) struct GrantState {
    /// The newest refresh token known.
    pub(super) newest: Option<Grant>,
    /// The refresh token the authority said is revoked; never presented again.
    pub(super) revoked: Option<HeldRefreshToken>,
    /// Fetches given up on (their id and the generation they presented).
    pub(super) abandoned: VecDeque<Abandoned>,
}

impl GrantState {
    /// Remembers a fetch given up on (the last [`ABANDONED_FETCHES`]).
    fn abandon(&mut self, id: RequestId, sent: Now, generation: u64) {
        if self.abandoned.len() == ABANDONED_FETCHES {
            self.abandoned.pop_front();
        }
        self.abandoned.push_back(Abandoned {
            id,
            sent,
            generation,
        });
    }

    /// The fetch given up on that `id` answers, forgotten once taken.
    pub(super) fn take_abandoned(&mut self, id: RequestId) -> Option<Abandoned> {
        let at = self.abandoned.iter().position(|a| a.id == id)?;
        self.abandoned.remove(at)
    }

    /// Whether this is a refresh-token flow (a grant, live or revoked).
    pub(super) fn is_refresh_flow(&self) -> bool {
        self.newest.is_some() || self.revoked.is_some()
    }

    /// Whether `rt` is the refresh token the authority revoked.
    fn is_revoked(&self, rt: &RefreshToken) -> bool {
        self.revoked.as_ref().is_some_and(|r| r.get() == rt)
    }
}

/// A fetch given up on: its answer, if it comes, is still used.
#[derive(Debug, Clone, Copy)]
pub(super) struct Abandoned {
    pub(super) id: RequestId,
    pub(super) sent: Now,
    pub(super) generation: u64,
}

/// How many fetches given up on are remembered, so that their late answers
/// are still recognised (and their rotated refresh tokens learned).
pub(super) const ABANDONED_FETCHES: usize = 8;

impl RefreshMachine {
    pub(super) fn abandon(&mut self, id: RequestId, sent: Now, generation: u64) {
        self.grant.abandon(id, sent, generation);
    }

    /// Takes the cached token's refresh token when it is of a later
    /// generation than ours, so this instance never presents one that a
    /// peer has already rotated.
    pub(super) fn learn_refresh_token(&mut self, token: &Arc<Token>) {
        let Some(rt) = token.refresh_token() else {
            return;
        };
        if self.grant.is_revoked(rt) {
            return;
        }
        let newer = match &self.grant.newest {
            None => !self.is_refresh_flow(),
            // Generations first: they settle almost every cache answer
            // without reading the tokens' bytes (a miss per answer in a
            // large simulated fleet).
            Some(g) => {
                (token.generation() > g.generation
                    || (g.origin == Origin::Configured && token.generation() >= g.generation))
                    && g.token.get() != rt
            }
        };
        if newer {
            self.grant.newest = Some(Grant {
                token: HeldRefreshToken::In(token.clone()),
                generation: token.generation(),
                origin: Origin::Cache,
            });
        }
    }

    /// After a revocation: takes the cached token's refresh token if it is
    /// not the revoked one, whatever its generation (a new grant starts
    /// again from its own first generation).
    pub(super) fn learn_live_grant(&mut self, token: &Arc<Token>) -> bool {
        match HeldRefreshToken::of(token) {
            Some(rt) if !self.grant.is_revoked(rt.get()) => {
                self.grant.revoked = None;
                self.grant.newest = Some(Grant {
                    token: rt,
                    generation: token.generation(),
                    origin: Origin::Cache,
                });
                true
            }
            _ => false,
        }
    }

    /// Turns an answer into the token it stands for (and whether it rotated
    /// the refresh token), learning a rotated refresh token first, whatever
    /// else happens: the old one is already spent at the authority.
    pub(super) fn accept_fetched(
        &mut self,
        response: TokenResponse,
        sent: Now,
        generation: u64,
    ) -> (Arc<Token>, bool) {
        let rotated = response.refresh_token.is_some();
        let given = response.expires_in;
        let hint = response.refresh_in.filter(|&s| s > 0);
        let resolved = self
            .config
            .lifetime
            .resolve(response, sent.wall, self.now.wall);
        let mut note = resolved.note;
        let mut token = self.floor_degenerate(resolved.token, given);
        // The authority's refresh hint makes the token stale no later than
        // it says, and never sooner than the refresh floor after the send.
        if let Some(hint) = hint {
            let after = Duration::from_secs(hint as u64).max(self.config.min_refresh_interval);
            let hinted = sent.wall.saturating_add(after);
            if hinted < token.stale_at() {
                token = token.with_stale_at(hinted);
                note = Some(LifetimeNote::RefreshHint { refresh_in: hint });
            }
        }
        if rotated {
            token = token.with_generation(generation.saturating_add(1));
        } else {
            // The authority kept the grant as it was: carry our refresh
            // token along so the cache stores the full state.
            let (rt, generation) = match &self.grant.newest {
                Some(g) => (Some(g.token.get().clone()), g.generation),
                None => (None, 0),
            };
            token = token.with_refresh_token(rt).with_generation(generation);
        }
        self.served.skew_ms = resolved.skew_ms;
        self.served.lifetime_note = note;
        let token = Arc::new(token);
        if rotated {
            // Our own answer wins, unless we have since learned of a later
            // generation (an abandoned fetch answering late).
            let next = token.generation();
            if let Some(rt) = HeldRefreshToken::of(&token) {
                if self
                    .grant
                    .newest
                    .as_ref()
                    .is_none_or(|g| next >= g.generation)
                {
                    self.grant.newest = Some(Grant {
                        token: rt,
                        generation: next,
                        origin: Origin::Answer,
                    });
                }
            }
        }
        (token, rotated)
    }

    /// Applies the refresh floor to a fetched token whose answer was
    /// degenerate (its `expires_in` below the policy's minimum lifetime):
    /// it is re-timed to go stale at the floor after the answer (plus up to a tenth, so a fleet does not renew in step) and to
    /// expire no sooner than one floor later, and recorded as degenerate.
    /// The floor doubles with each consecutive degenerate answer, and is at
    /// least twice the current token's fresh period (up to the cap).
    pub(super) fn floor_degenerate(&mut self, token: Token, given: Option<i64>) -> Token {
        let base = self.config.min_refresh_interval;
        let min_ms = crate::time::duration_millis(self.config.lifetime.min_lifetime());
        // Degenerate: the policy had to raise the lifetime the authority
        // gave to its minimum (zero, negative, or shorter than the minimum).
        // A genuine short lifetime is the authority's choice.
        let clamped_up = given.is_some_and(|g| g <= 0 || (g as u64).saturating_mul(1_000) < min_ms);
        if base.is_zero() || !clamped_up {
            self.served.degenerate_streak = 0;
            self.served.degenerate = None;
            return token;
        }
        self.served.degenerate_streak = self.served.degenerate_streak.saturating_add(1);
        let cap = self.config.backoff.max().max(base);
        let doublings = self.served.degenerate_streak.saturating_sub(1).min(31);
        let mut floor = base.saturating_mul(1u32 << doublings).min(cap);
        // Continue the fleet's curve: the token we hold may be a peer's
        // re-timed one (or a normal one), and the new token must outlive
        // it, or peers would not adopt it and would each fetch their own.
        if let Some(current) = &self.served.current {
            let fresh = current
                .stale_at()
                .saturating_duration_since(current.issued_at());
            floor = floor.max(fresh.saturating_mul(2).min(cap));
        }
        let spread = crate::time::duration_millis(floor) / 10;
        let extra = Duration::from_millis(if spread == 0 {
            0
        } else {
            self.rng.u64(0..=spread)
        });
        let received = self.now.wall.max(token.issued_at());
        let stale_at = received + floor.saturating_add(extra);
        let expires_at = token.expires_at().max(stale_at + floor);
        let record = DegenerateLifetime {
            expires_in: given,
            authority_expires_at: token.expires_at(),
            floor,
            consecutive: self.served.degenerate_streak,
        };
        self.served.degenerate = Some(Box::new((token.id(), record)));
        Token::new(
            token.access_token().clone(),
            token.issued_at(),
            stale_at,
            expires_at,
        )
        .with_token_type(token.token_type())
        .with_refresh_token(token.refresh_token().cloned())
        .with_id_token(token.id_token().cloned())
        .with_scope(token.scope().map(str::to_owned))
        .with_generation(token.generation())
    }

    /// Why a fetched token cannot be served: it expired before its answer
    /// arrived (an answer slower than the token's life, or a clock far
    /// ahead of the authority's). Publishing it would serve a dead token.
    pub(super) fn dead_on_arrival(token: &Token, now: Timestamp) -> Option<FetchError> {
        (!token.is_valid_at(now)).then(|| {
            FetchError::transient(format!(
                "the token expired before its answer arrived (lifetime {:?})",
                token.lifetime()
            ))
        })
    }

    /// The degenerate record, if it is the current token's (an adopted
    /// token or a late answer may have replaced the one it was made for).
    pub(super) fn degenerate_of_current(&self) -> Option<DegenerateLifetime> {
        self.served.degenerate_of_current()
    }
}
