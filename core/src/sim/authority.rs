//! The simulated authority: issues tokens, or fails as its fault plan says.

use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use crate::error::FetchError;
use crate::machine::FetchRequest;
use crate::secret::{AccessToken, RefreshToken};
use crate::time::Timestamp;
use crate::token::{TokenId, TokenResponse};

/// How the authority misbehaves during a [`Fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Answers 503: a transient error.
    Outage,
    /// Answers 429 with this Retry-After.
    RateLimited {
        /// The Retry-After sent.
        retry_after: Duration,
    },
    /// Answers 401 `invalid_client`: a permanent error.
    Permanent,
    /// Holds every request this long before answering it (with a token,
    /// as if the authority had been stuck and then recovered): a hang
    /// longer than the machine's fetch deadline is abandoned by it.
    Hang {
        /// How long each request sent during the fault is held.
        held: Duration,
    },
}

/// A window of time, counted from the start of the simulation, during which
/// the authority misbehaves.
///
/// ```
/// use freshtoken_core::sim::{Fault, FaultKind};
/// use std::time::Duration;
///
/// let outage = Fault::new(FaultKind::Outage, Duration::from_secs(3600), Duration::from_secs(600));
/// assert!(outage.active_at(Duration::from_secs(3700)));
/// assert!(!outage.active_at(Duration::from_secs(4200)));
/// assert_eq!((outage.start(), outage.length()), (Duration::from_secs(3600), Duration::from_secs(600)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    kind: FaultKind,
    from: Duration,
    length: Duration,
}

impl Fault {
    /// `kind` from `from` after the start, for `length`.
    pub fn new(kind: FaultKind, from: Duration, length: Duration) -> Self {
        Fault { kind, from, length }
    }

    /// Whether the fault is active `offset` after the start.
    pub fn active_at(&self, offset: Duration) -> bool {
        offset >= self.from && offset < self.from.saturating_add(self.length)
    }

    /// The kind.
    pub fn kind(&self) -> FaultKind {
        self.kind
    }

    /// When it begins, counted from the start of the simulation.
    pub fn start(&self) -> Duration {
        self.from
    }

    /// How long it lasts.
    pub fn length(&self) -> Duration {
        self.length
    }

    fn error(&self) -> FetchError {
        match self.kind {
            FaultKind::Outage => FetchError::transient("service unavailable").with_status(503),
            FaultKind::RateLimited { retry_after } => FetchError::rate_limited("too many requests")
                .with_status(429)
                .with_retry_after(Some(retry_after)),
            FaultKind::Permanent => FetchError::permanent("invalid_client").with_status(401),
            // Not an error: `answer` holds the request instead.
            FaultKind::Hang { .. } => FetchError::transient("held"),
        }
    }
}

/// Why a rotated refresh token can no longer be known by any instance:
/// the losses no client can prevent (see [`Report::inherent_reuses`](super::Report)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Loss {
    /// (a) The only instance that knew it was killed before storing it.
    Killed,
    /// (b) The answer that carried it was lost, or arrived after the
    /// instance's deadline for it had passed at shutdown.
    LostAnswer,
    /// (c) A cache acknowledged a store (or a lease) and then lost it.
    CacheLost,
}

/// A refresh-token family at the authority: rotation on every use, and
/// reuse detection that revokes the whole family (OAuth 2.1's rule).
#[derive(Debug)]
struct Family {
    /// The one refresh token that may be presented now.
    current: String,
    /// Spent tokens, with when they were rotated away.
    spent: std::collections::HashMap<String, Timestamp>,
    revoked: bool,
    /// The current token became unknowable, and why.
    lost: Option<Loss>,
    next: u64,
}

/// Hashes a [`TokenId`] as its own 64 bits: they are a SHA-256 digest's
/// already, so the default hasher's mixing only costs time (looking up a
/// token's expiry at each publication was 3 % of a simulation's
/// instructions).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for a `TokenId` (its `Hash` writes one u64); kept a
        // proper hash for anything else.
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// What the authority saw of refresh tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct ReuseCounts {
    /// Spent tokens presented with no inherent loss to explain it: defects.
    pub defects: u64,
    pub killed: u64,
    pub lost_answer: u64,
    pub cache_lost: u64,
    /// Spent tokens presented within the reuse interval (accepted).
    pub grace: u64,
}

pub(super) struct Authority {
    lifetime_secs: i64,
    /// The `expires_in` sent, when it is not the true lifetime (a
    /// degenerate authority: zero, negative, or shorter than its tokens live).
    advertised: Option<i64>,
    latency: Duration,
    /// Probability of a slow answer, and its latency factor range.
    tail: f64,
    faults: Vec<Fault>,
    start: Timestamp,
    rng: fastrand::Rng,
    issued: u64,
    /// True expiry of every access token issued, for availability (read at
    /// every publication: see [`IdHasher`]).
    expiries: std::collections::HashMap<TokenId, Timestamp, BuildHasherDefault<IdHasher>>,
    family: Option<Family>,
    reuse_interval: Duration,
    pub(super) reuses: ReuseCounts,
}

impl Authority {
    pub(super) fn new(
        start: Timestamp,
        lifetime: Duration,
        latency: Duration,
        faults: Vec<Fault>,
        seed: u64,
    ) -> Self {
        Authority {
            start,
            rng: fastrand::Rng::with_seed(seed),
            lifetime_secs: i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX).max(1),
            advertised: None,
            latency,
            tail: 0.0,
            faults,
            issued: 0,
            expiries: std::collections::HashMap::default(),
            family: None,
            reuse_interval: Duration::ZERO,
            reuses: ReuseCounts::default(),
        }
    }

    /// Answers slower than usual with probability `p` (5 to 100 times the
    /// latency): the long tail that outlasts peer waits and timeouts.
    pub(super) fn with_tail(mut self, p: f64) -> Self {
        self.tail = p;
        self
    }

    /// Sends `expires_in: secs` whatever its tokens' true lifetime.
    pub(super) fn with_advertised(mut self, secs: Option<i64>) -> Self {
        self.advertised = secs;
        self
    }

    /// Starts a refresh-token family; returns its first token.
    pub(super) fn with_family(mut self, reuse_interval: Duration) -> Self {
        self.reuse_interval = reuse_interval;
        self.family = Some(Family {
            current: "rt-0".to_owned(),
            spent: std::collections::HashMap::new(),
            revoked: false,
            lost: None,
            next: 1,
        });
        self
    }

    /// The refresh token the family started with.
    pub(super) fn first_refresh_token(&self) -> Option<RefreshToken> {
        self.family.as_ref().map(|_| RefreshToken::new("rt-0"))
    }

    /// The refresh token that may be presented now, unless the family is
    /// revoked or its current token was already lost.
    pub(super) fn live_refresh_token(&self) -> Option<&str> {
        self.family
            .as_ref()
            .filter(|f| !f.revoked && f.lost.is_none())
            .map(|f| f.current.as_str())
    }

    /// Records that the current refresh token can no longer be known.
    pub(super) fn lose_current(&mut self, why: Loss) {
        if let Some(f) = self.family.as_mut().filter(|f| !f.revoked) {
            f.lost.get_or_insert(why);
        }
    }

    pub(super) fn is_revoked(&self) -> bool {
        self.family.as_ref().is_some_and(|f| f.revoked)
    }

    /// The true expiry of an access token it issued.
    pub(super) fn expiry_of(&self, id: TokenId) -> Option<Timestamp> {
        self.expiries.get(&id).copied()
    }

    /// The answer to `request` sent at true time `now`, and how long it
    /// takes to arrive.
    pub(super) fn answer(
        &mut self,
        now: Timestamp,
        request: &FetchRequest,
    ) -> (Result<TokenResponse, FetchError>, Duration) {
        let offset = now.saturating_duration_since(self.start);
        // Latency varies by ±50 %, so answers can overtake each other.
        let ms = crate::time::duration_millis(self.latency);
        let mut latency = self.rng.u64(ms / 2..=ms + ms / 2);
        if self.tail > 0.0 && self.rng.f64() < self.tail {
            latency = latency.saturating_mul(self.rng.u64(5..=100));
        }
        let mut latency = Duration::from_millis(latency);
        if let Some(fault) = self.faults.iter().find(|f| f.active_at(offset)) {
            match fault.kind {
                FaultKind::Hang { held } => latency = latency.saturating_add(held),
                _ => return (Err(fault.error()), latency),
            }
        }
        let refresh_token = match self.refresh(now, request) {
            Ok(rt) => rt,
            Err(e) => return (Err(e), latency),
        };
        self.issued += 1;
        let token = AccessToken::new(format!("sim-token-{}", self.issued));
        self.expiries.insert(
            token.fingerprint(),
            now + Duration::from_secs(self.lifetime_secs as u64),
        );
        let response = TokenResponse::new(token)
            .with_expires_in(Some(self.advertised.unwrap_or(self.lifetime_secs)))
            .with_refresh_token(refresh_token);
        (Ok(response), latency)
    }

    /// Checks and rotates the presented refresh token.
    fn refresh(
        &mut self,
        now: Timestamp,
        request: &FetchRequest,
    ) -> Result<Option<RefreshToken>, FetchError> {
        let Some(family) = self.family.as_mut() else {
            return Ok(None);
        };
        let revoked = || FetchError::grant_revoked("invalid_grant").with_status(400);
        let Some(presented) = request.refresh_token.as_ref().map(|t| t.expose_secret()) else {
            return Err(FetchError::permanent("invalid_request: no refresh token"));
        };
        if family.revoked {
            return Err(revoked());
        }
        if presented == family.current {
            let next = format!("rt-{}", family.next);
            family.next += 1;
            family
                .spent
                .insert(std::mem::replace(&mut family.current, next), now);
            return Ok(Some(RefreshToken::new(family.current.clone())));
        }
        match family.spent.get(presented) {
            Some(rotated_at)
                if now.saturating_duration_since(*rotated_at) <= self.reuse_interval
                    && !self.reuse_interval.is_zero() =>
            {
                // Within the reuse interval: the authority answers with the
                // current token again, as Okta and others do (which makes a
                // lost one known again).
                self.reuses.grace += 1;
                family.lost = None;
                Ok(Some(RefreshToken::new(family.current.clone())))
            }
            Some(_) => {
                match family.lost {
                    None => self.reuses.defects += 1,
                    Some(Loss::Killed) => self.reuses.killed += 1,
                    Some(Loss::LostAnswer) => self.reuses.lost_answer += 1,
                    Some(Loss::CacheLost) => self.reuses.cache_lost += 1,
                }
                family.revoked = true;
                Err(revoked())
            }
            None => Err(revoked()),
        }
    }
}
