//! Metrics and tracing of the drivers (feature `metrics`).
//!
//! Every driver records what it does through the [`metrics`] facade crate,
//! so any exporter works: `metrics-exporter-prometheus` for a `/metrics`
//! endpoint, an OpenTelemetry or StatsD exporter, or a recorder of your own.
//! Install the exporter (the recorder) before spawning drivers, or call
//! [`describe`] after installing it so that its help texts and units are
//! known. Without an installed recorder the calls cost next to nothing.
//!
//! Each driver's metrics carry a `refresher` label, the name set with
//! [`Builder::name`](crate::driver::Builder::name) (`"default"` unless set;
//! a `TokenManager` names each key's refresher `TokenKey::cache_name`: the
//! client id and a hash of the key's audience, scopes and resources).
//! No label ever holds a token, a token id, a URL or anything an authority
//! sent: every label value comes from a small fixed set, or from that name.
//!
//! # The metrics
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `freshtoken_fetches_total` | counter | `refresher`, `outcome` (`success`, `error`), `error` (`none`, `transient`, `rate_limited`, `permanent`, `grant_revoked`, `timeout`, `dead_on_arrival`) | token requests to the source, by how they ended; a fetch given up on at its deadline counts once, as `timeout` |
//! | `freshtoken_fetch_duration_seconds` | histogram | `refresher`, `outcome` | how long each answered fetch took (late answers included), by the real clock |
//! | `freshtoken_fetch_retries_total` | counter | `refresher` | fetches that were retries (attempt 2 and later after a failure) |
//! | `freshtoken_cache_operations_total` | counter | `refresher`, `layer` (`memory`, `file`, `redis`, `postgres`, `custom`, ...: [`TokenCache::metrics_label`]), `position` (the layer's index in a [`CacheStack`](crate::cache::CacheStack), `0` for a single cache), `operation` (`load`, `store`, `write_back`, `lease`, `release`), `outcome` (`hit`, `miss`, `ok`, `granted`, `busy`, `unsupported`, `error`) | every call the driver made on a cache; through a stack, every call on each layer it asked |
//! | `freshtoken_lease_requests_total` | counter | `refresher`, `outcome` (`granted`, `busy`, `unsupported`, `error`) | the answers to the machine's lease requests (extensions included) |
//! | `freshtoken_invalidations_total` | counter | `refresher`, `outcome` (`accepted`, `rate_limited`, `collapsed`, `ignored`) | reports of a rejected token (`TokenHandle::invalidate`): `accepted` started a refresh at once; `rate_limited` waits for `invalidate_interval` after the last one; `collapsed` joined a refresh already under way (or named a token already replaced); `ignored` came while the machine could not act (starting, failed, stopping) |
//! | `freshtoken_tokens_adopted_total` | counter | `refresher` | tokens taken from the shared cache instead of fetched |
//! | `freshtoken_token_stale_in_seconds` | gauge | `refresher` | seconds until the published token is stale (due for refresh); 0 once stale or when there is no token |
//! | `freshtoken_token_expires_in_seconds` | gauge | `refresher` | seconds until the published token expires; 0 once expired or when there is no token |
//! | `freshtoken_token_stale_at_timestamp_seconds` | gauge | `refresher` | when it becomes stale, as Unix time; 0 without a token |
//! | `freshtoken_token_expires_at_timestamp_seconds` | gauge | `refresher` | when it expires, as Unix time; 0 without a token |
//! | `freshtoken_token_valid` | gauge | `refresher` | 1 while the published token is valid, else 0 |
//! | `freshtoken_refresh_state` | gauge | `refresher`, `state` (`starting`, `healthy`, `retrying`, `failed`, `stopped`) | 1 for the current state, 0 for the others (an OpenMetrics state set) |
//! | `freshtoken_refresh_state_code` | gauge | `refresher` | the same as a number: 0 starting, 1 healthy, 2 retrying, 3 failed, 4 stopped |
//! | `freshtoken_refresh_consecutive_failures` | gauge | `refresher` | failed attempts since the last success |
//! | `freshtoken_clock_skew_seconds` | gauge | `refresher` | the authority's clock minus ours, estimated from its last answer (`Date` header or the JWT's `iat`); absent until an answer allowed an estimate |
//! | `freshtoken_dpop_proofs_total` | counter | `server` (`authority`, `resource`) | DPoP proofs signed (feature `dpop`): for token requests, and by the middleware for requests to resource servers (one per request sent, replays included) |
//! | `freshtoken_dpop_nonce_retries_total` | counter | `server` (`authority`, `resource`) | requests sent again because the server asked for a DPoP nonce (`use_dpop_nonce`) and gave one |
//!
//! The two DPoP counters have no `refresher` label: a key and a
//! middleware may serve several refreshers.
//!
//! The gauges are set at every publication and at every wake-up of the
//! driver (each tick, and at least every heartbeat), so the "seconds until"
//! gauges count down between refreshes rather than freeze at publication;
//! an exporter that computes `time() - ..._expires_at_timestamp_seconds`
//! needs no freshness at all. A token that never expires shows `+Inf`.
//!
//! Alerts worth having: `freshtoken_token_expires_in_seconds < 60` (the
//! token is about to expire or there is none),
//! `freshtoken_refresh_state{state="failed"} == 1` (someone must act), and
//! `increase(freshtoken_fetches_total{outcome="error"}[15m]) > 10`.
//!
//! # Tracing
//!
//! Every fetch opens a span, `freshtoken.refresh`, with the fields
//! `refresher`, `attempt`, `outcome`, `error` (the kind, as in the
//! metrics), `duration_ms` and `late` (a late answer to a fetch given up
//! on). The driver's warning about a failed fetch is emitted inside it and
//! carries a `hint` field that says what to check ([`fetch_hint`]: "is the
//! client secret right?" after `invalid_client`); cache warnings carry
//! [`cache_hint`]. No span or event holds a secret. The spans and hints are
//! there with or without the `metrics` feature.
//!
//! # Example
//!
//! ```
//! use freshtoken::driver::Builder;
//! use freshtoken::source::ConstTokenSource;
//! use std::time::Duration;
//!
//! // Install an exporter first, e.g.
//! // metrics_exporter_prometheus::PrometheusBuilder::new().install()?;
//! let (tokens, driver) = Builder::new()
//!     .name("api")
//!     .spawn_thread(ConstTokenSource::new("key", Some(3600)))
//!     .expect("a thread");
//! tokens.wait_ready(Duration::from_secs(5)).expect("a token");
//! // ... freshtoken_token_expires_in_seconds{refresher="api"} is about 3600 now.
//! driver.shutdown_blocking();
//! ```

// Without a driver there is nothing to observe: the crate root allows the
// unused driver hooks then.

mod hints;
mod observer;
mod sink;

use std::cell::RefCell;
use std::sync::Arc;

pub use hints::{cache_hint, fetch_hint};
pub(crate) use observer::Observer;

use freshtoken_core::{CacheError, LeaseOutcome, Token};

use crate::cache::TokenCache;

/// The metric names, for exporters' configuration and dashboards.
pub mod names {
    /// Counter: fetches by `outcome` and `error`.
    pub const FETCHES_TOTAL: &str = "freshtoken_fetches_total";
    /// Histogram: fetch duration in seconds, by `outcome`.
    pub const FETCH_DURATION_SECONDS: &str = "freshtoken_fetch_duration_seconds";
    /// Counter: fetches that were retries.
    pub const FETCH_RETRIES_TOTAL: &str = "freshtoken_fetch_retries_total";
    /// Counter: cache calls by `layer`, `position`, `operation` and `outcome`.
    pub const CACHE_OPERATIONS_TOTAL: &str = "freshtoken_cache_operations_total";
    /// Counter: lease answers by `outcome`.
    pub const LEASE_REQUESTS_TOTAL: &str = "freshtoken_lease_requests_total";
    /// Counter: invalidations by `outcome`.
    pub const INVALIDATIONS_TOTAL: &str = "freshtoken_invalidations_total";
    /// Counter: tokens adopted from the shared cache.
    pub const TOKENS_ADOPTED_TOTAL: &str = "freshtoken_tokens_adopted_total";
    /// Gauge: seconds until the published token is stale.
    pub const TOKEN_STALE_IN_SECONDS: &str = "freshtoken_token_stale_in_seconds";
    /// Gauge: seconds until the published token expires.
    pub const TOKEN_EXPIRES_IN_SECONDS: &str = "freshtoken_token_expires_in_seconds";
    /// Gauge: when the published token becomes stale (Unix seconds).
    pub const TOKEN_STALE_AT_TIMESTAMP_SECONDS: &str =
        "freshtoken_token_stale_at_timestamp_seconds";
    /// Gauge: when the published token expires (Unix seconds).
    pub const TOKEN_EXPIRES_AT_TIMESTAMP_SECONDS: &str =
        "freshtoken_token_expires_at_timestamp_seconds";
    /// Gauge: 1 while the published token is valid.
    pub const TOKEN_VALID: &str = "freshtoken_token_valid";
    /// Gauge: 1 for the current `state`, 0 for the others.
    pub const REFRESH_STATE: &str = "freshtoken_refresh_state";
    /// Gauge: the state as a number (0 starting, 1 healthy, 2 retrying,
    /// 3 failed, 4 stopped).
    pub const REFRESH_STATE_CODE: &str = "freshtoken_refresh_state_code";
    /// Gauge: failed attempts since the last success.
    pub const REFRESH_CONSECUTIVE_FAILURES: &str = "freshtoken_refresh_consecutive_failures";
    /// Gauge: the authority's clock minus ours, in seconds.
    pub const CLOCK_SKEW_SECONDS: &str = "freshtoken_clock_skew_seconds";

    /// Counter: DPoP proofs signed, by `server`.
    pub const DPOP_PROOFS_TOTAL: &str = "freshtoken_dpop_proofs_total";
    /// Counter: requests sent again with a DPoP nonce, by `server`.
    pub const DPOP_NONCE_RETRIES_TOTAL: &str = "freshtoken_dpop_nonce_retries_total";

    /// Every name above.
    pub const ALL: [&str; 18] = [
        FETCHES_TOTAL,
        FETCH_DURATION_SECONDS,
        FETCH_RETRIES_TOTAL,
        CACHE_OPERATIONS_TOTAL,
        LEASE_REQUESTS_TOTAL,
        INVALIDATIONS_TOTAL,
        TOKENS_ADOPTED_TOTAL,
        TOKEN_STALE_IN_SECONDS,
        TOKEN_EXPIRES_IN_SECONDS,
        TOKEN_STALE_AT_TIMESTAMP_SECONDS,
        TOKEN_EXPIRES_AT_TIMESTAMP_SECONDS,
        TOKEN_VALID,
        REFRESH_STATE,
        REFRESH_STATE_CODE,
        REFRESH_CONSECUTIVE_FAILURES,
        CLOCK_SKEW_SECONDS,
        DPOP_PROOFS_TOTAL,
        DPOP_NONCE_RETRIES_TOTAL,
    ];
}

/// Tells the installed recorder the unit and help text of every metric.
/// Drivers call it when they are spawned; call it yourself if you install
/// the recorder after that.
#[cfg(feature = "metrics")]
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        names::FETCHES_TOTAL,
        Unit::Count,
        "Token requests to the source, by outcome and error kind."
    );
    describe_histogram!(
        names::FETCH_DURATION_SECONDS,
        Unit::Seconds,
        "How long answered token requests took."
    );
    describe_counter!(
        names::FETCH_RETRIES_TOTAL,
        Unit::Count,
        "Token requests that retried a failed one."
    );
    describe_counter!(
        names::CACHE_OPERATIONS_TOTAL,
        Unit::Count,
        "Calls on cache layers, by layer, operation and outcome."
    );
    describe_counter!(
        names::LEASE_REQUESTS_TOTAL,
        Unit::Count,
        "Answers to cache lease requests, by outcome."
    );
    describe_counter!(
        names::INVALIDATIONS_TOTAL,
        Unit::Count,
        "Reports of a rejected token, by what they caused."
    );
    describe_counter!(
        names::TOKENS_ADOPTED_TOTAL,
        Unit::Count,
        "Tokens taken from the shared cache instead of fetched."
    );
    describe_gauge!(
        names::TOKEN_STALE_IN_SECONDS,
        Unit::Seconds,
        "Seconds until the published token is due for refresh (0 when stale or absent)."
    );
    describe_gauge!(
        names::TOKEN_EXPIRES_IN_SECONDS,
        Unit::Seconds,
        "Seconds until the published token expires (0 when expired or absent)."
    );
    describe_gauge!(
        names::TOKEN_STALE_AT_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "When the published token becomes stale, as Unix time."
    );
    describe_gauge!(
        names::TOKEN_EXPIRES_AT_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "When the published token expires, as Unix time."
    );
    describe_gauge!(
        names::TOKEN_VALID,
        "1 while the published token is valid, else 0."
    );
    describe_gauge!(
        names::REFRESH_STATE,
        "1 for the refresher's current state, 0 for the others."
    );
    describe_gauge!(
        names::REFRESH_STATE_CODE,
        "The refresh state: 0 starting, 1 healthy, 2 retrying, 3 failed, 4 stopped."
    );
    describe_gauge!(
        names::REFRESH_CONSECUTIVE_FAILURES,
        Unit::Count,
        "Failed attempts since the last success."
    );
    describe_gauge!(
        names::CLOCK_SKEW_SECONDS,
        Unit::Seconds,
        "The authority's clock minus ours, estimated from its last answer."
    );
    describe_counter!(
        names::DPOP_PROOFS_TOTAL,
        Unit::Count,
        "DPoP proofs signed, for the authority or resource servers."
    );
    describe_counter!(
        names::DPOP_NONCE_RETRIES_TOTAL,
        Unit::Count,
        "Requests sent again with the DPoP nonce a server asked for."
    );
}

/// Which server a DPoP proof or nonce retry was for (the `server` label).
#[cfg(feature = "dpop")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DpopServer {
    /// The authority's token endpoint.
    Authority,
    /// A resource server, through the middleware.
    #[cfg_attr(
        not(any(
            feature = "tower",
            feature = "reqwest-middleware",
            feature = "ureq-middleware"
        )),
        allow(dead_code)
    )]
    Resource,
}

#[cfg(feature = "dpop")]
impl DpopServer {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn label(self) -> &'static str {
        match self {
            DpopServer::Authority => "authority",
            DpopServer::Resource => "resource",
        }
    }
}

/// Counts a DPoP proof signed for `server`.
#[cfg(feature = "dpop")]
pub(crate) fn dpop_proof(server: DpopServer) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(names::DPOP_PROOFS_TOTAL, "server" => server.label()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = server;
}

/// Counts a request sent again with the DPoP nonce `server` asked for.
#[cfg(feature = "dpop")]
pub(crate) fn dpop_nonce_retry(server: DpopServer) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(names::DPOP_NONCE_RETRIES_TOTAL, "server" => server.label()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = server;
}

/// Without the `metrics` feature there is no recorder to describe to.
#[cfg(not(feature = "metrics"))]
#[allow(dead_code)]
pub(crate) fn describe() {}

/// The operations counted in `freshtoken_cache_operations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheOp {
    Load,
    Store,
    WriteBack,
    Lease,
    Release,
}

impl CacheOp {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn label(self) -> &'static str {
        match self {
            CacheOp::Load => "load",
            CacheOp::Store => "store",
            CacheOp::WriteBack => "write_back",
            CacheOp::Lease => "lease",
            CacheOp::Release => "release",
        }
    }
}

/// The `outcome` label of a cache call's result.
pub(crate) trait CacheOutcome {
    fn outcome(&self) -> &'static str;
}

impl CacheOutcome for Result<Option<Token>, CacheError> {
    fn outcome(&self) -> &'static str {
        match self {
            Ok(Some(_)) => "hit",
            Ok(None) => "miss",
            Err(_) => "error",
        }
    }
}

impl CacheOutcome for Result<(), CacheError> {
    fn outcome(&self) -> &'static str {
        match self {
            Ok(()) => "ok",
            Err(_) => "error",
        }
    }
}

impl CacheOutcome for Result<LeaseOutcome, CacheError> {
    fn outcome(&self) -> &'static str {
        match self {
            Ok(LeaseOutcome::Granted) => "granted",
            Ok(LeaseOutcome::Busy) => "busy",
            Ok(LeaseOutcome::Unsupported) => "unsupported",
            Err(_) => "error",
        }
    }
}

thread_local! {
    /// The refresher whose cache call runs on this thread, set by
    /// [`Metered`] around a blocking call, so that a layered cache (which
    /// the driver sees as one) can label each layer's calls with it.
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

struct Scope {
    refresher: Arc<str>,
    /// A layered cache recorded its layers' calls itself.
    layered: bool,
}

/// Runs `f` with `refresher` as this thread's scope; returns whether a
/// layered cache recorded its layers inside it.
fn scoped<T>(refresher: &Arc<str>, f: impl FnOnce() -> T) -> (T, bool) {
    /// Puts the outer scope back, even if `f` panics (the driver contains
    /// the panic and the thread lives on).
    struct Restore(Option<Scope>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            SCOPE.with(|s| *s.borrow_mut() = outer);
        }
    }
    let scope = Scope {
        refresher: refresher.clone(),
        layered: false,
    };
    let _restore = Restore(SCOPE.with(|s| s.borrow_mut().replace(scope)));
    let value = f();
    let layered = SCOPE.with(|s| s.borrow().as_ref().is_some_and(|s| s.layered));
    (value, layered)
}

/// Counts a call a [`CacheStack`](crate::cache::CacheStack) made on its
/// layer at `position`, when it runs for a driver. A layer that is itself
/// a stack counts its own layers.
pub(crate) fn layer_op<R: CacheOutcome>(
    position: usize,
    layer: &dyn TokenCache,
    op: CacheOp,
    result: &R,
) {
    SCOPE.with(|s| {
        if let Some(scope) = s.borrow_mut().as_mut() {
            scope.layered = true;
            let label = layer.metrics_label();
            if label != "stack" {
                sink::cache_op(&scope.refresher, label, position, op, result.outcome());
            }
        }
    });
}

/// A driver's blocking cache, with every call counted.
pub(crate) struct Metered {
    inner: Arc<dyn TokenCache>,
    refresher: Arc<str>,
}

impl Metered {
    pub(crate) fn new(inner: Arc<dyn TokenCache>, refresher: Arc<str>) -> Self {
        Metered { inner, refresher }
    }

    fn call<R: CacheOutcome>(&self, op: CacheOp, f: impl FnOnce(&dyn TokenCache) -> R) -> R {
        let (result, layered) = scoped(&self.refresher, || f(&*self.inner));
        if !layered {
            let label = self.inner.metrics_label();
            sink::cache_op(&self.refresher, label, 0, op, result.outcome());
        }
        result
    }
}

impl TokenCache for Metered {
    fn load(&self) -> Result<Option<Token>, CacheError> {
        self.call(CacheOp::Load, |c| c.load())
    }

    fn load_newer(
        &self,
        newer_than: Option<freshtoken_core::Timestamp>,
    ) -> Result<Option<Token>, CacheError> {
        self.call(CacheOp::Load, |c| c.load_newer(newer_than))
    }

    fn store(&self, token: &Token) -> Result<(), CacheError> {
        self.call(CacheOp::Store, |c| c.store(token))
    }

    fn acquire_lease(&self, ttl: std::time::Duration) -> Result<LeaseOutcome, CacheError> {
        self.call(CacheOp::Lease, |c| c.acquire_lease(ttl))
    }

    fn release_lease(&self) -> Result<(), CacheError> {
        self.call(CacheOp::Release, |c| c.release_lease())
    }

    fn bind_config(&self, config: freshtoken_core::TokenId) {
        self.inner.bind_config(config)
    }

    fn metrics_label(&self) -> &'static str {
        self.inner.metrics_label()
    }
}

/// A driver's async cache, with every call counted.
#[cfg(all(
    feature = "metrics",
    any(feature = "tokio", feature = "async-std", feature = "smol")
))]
pub(crate) struct MeteredAsync<C> {
    inner: Arc<C>,
    refresher: Arc<str>,
}

#[cfg(all(
    feature = "metrics",
    any(feature = "tokio", feature = "async-std", feature = "smol")
))]
impl<C: crate::cache::AsyncTokenCache> MeteredAsync<C> {
    fn count<R: CacheOutcome>(&self, op: CacheOp, result: R) -> R {
        let label = self.inner.metrics_label();
        sink::cache_op(&self.refresher, label, 0, op, result.outcome());
        result
    }
}

#[cfg(all(
    feature = "metrics",
    any(feature = "tokio", feature = "async-std", feature = "smol")
))]
impl<C: crate::cache::AsyncTokenCache> crate::cache::AsyncTokenCache for MeteredAsync<C> {
    async fn load(&self) -> Result<Option<Token>, CacheError> {
        let result = self.inner.load().await;
        self.count(CacheOp::Load, result)
    }

    async fn load_newer(
        &self,
        newer_than: Option<freshtoken_core::Timestamp>,
    ) -> Result<Option<Token>, CacheError> {
        let result = self.inner.load_newer(newer_than).await;
        self.count(CacheOp::Load, result)
    }

    async fn store(&self, token: &Token) -> Result<(), CacheError> {
        let result = self.inner.store(token).await;
        self.count(CacheOp::Store, result)
    }

    async fn acquire_lease(&self, ttl: std::time::Duration) -> Result<LeaseOutcome, CacheError> {
        let result = self.inner.acquire_lease(ttl).await;
        self.count(CacheOp::Lease, result)
    }

    async fn release_lease(&self) -> Result<(), CacheError> {
        let result = self.inner.release_lease().await;
        self.count(CacheOp::Release, result)
    }

    fn bind_config(&self, config: freshtoken_core::TokenId) {
        self.inner.bind_config(config)
    }

    fn metrics_label(&self) -> &'static str {
        self.inner.metrics_label()
    }
}

/// The driver's blocking cache, counted when the `metrics` feature is on.
pub(crate) fn meter_cache(cache: Arc<dyn TokenCache>, refresher: &Arc<str>) -> Arc<dyn TokenCache> {
    if cfg!(feature = "metrics") {
        Arc::new(Metered::new(cache, refresher.clone()))
    } else {
        cache
    }
}

/// The driver's async cache, counted when the `metrics` feature is on.
#[cfg(all(
    feature = "metrics",
    any(feature = "tokio", feature = "async-std", feature = "smol")
))]
pub(crate) fn meter_async<C: crate::cache::AsyncTokenCache>(
    cache: Arc<C>,
    refresher: &Arc<str>,
) -> Arc<impl crate::cache::AsyncTokenCache> {
    Arc::new(MeteredAsync {
        inner: cache,
        refresher: refresher.clone(),
    })
}

/// Without the `metrics` feature the async cache is used as it is.
#[cfg(all(
    not(feature = "metrics"),
    any(feature = "tokio", feature = "async-std", feature = "smol")
))]
pub(crate) fn meter_async<C: crate::cache::AsyncTokenCache>(
    cache: Arc<C>,
    _refresher: &Arc<str>,
) -> Arc<C> {
    cache
}
