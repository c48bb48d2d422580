//! The `metrics` feature through real outages: a driver against a real
//! LocalAuthority (HTTP on loopback) with a fault plan, time on a shared
//! ManualClock, every number read back from a recording exporter installed
//! as the global `metrics` recorder, and every span and event captured by a
//! process-wide tracing subscriber (drivers log from their own threads).

mod metrics_support;

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use freshtoken::driver::{Builder, DriverHandle};
use freshtoken::metrics::names;
use freshtoken::testing::{Fault, FaultPlan, FaultWindow, LocalAuthority};
use freshtoken::{Backoff, Clock, Jitter, ManualClock, Timestamp, TokenHandle};
use metrics_support::{assert_bounded, Recording, View, HUNG};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

const T0: Timestamp = Timestamp::from_secs(1_700_000_000);
const CLIENT_SECRET: &str = "app-secret-do-not-log";

/// Writes every span (with its name and fields, recorded later too) and
/// every event into one string.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={}", field.name(), value);
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut out = self.0.lock().unwrap();
        let _ = write!(out, "\nspan {}", span.metadata().name());
        span.record(&mut Fields(&mut out));
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut out = self.0.lock().unwrap();
        out.push_str("\nrecord");
        values.record(&mut Fields(&mut out));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut out = self.0.lock().unwrap();
        let _ = write!(out, "\n{}", event.metadata().level());
        event.record(&mut Fields(&mut out));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn capture() -> Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = Capture::default();
            tracing::subscriber::set_global_default(capture.clone()).expect("first subscriber");
            capture
        })
        .clone()
}

fn authority(clock: &ManualClock) -> LocalAuthority {
    LocalAuthority::builder()
        .client("app", CLIENT_SECRET)
        .token_lifetime(Duration::from_secs(60))
        .clock(clock.clone())
        .start()
        .expect("local authority")
}

fn builder(name: &str, clock: &ManualClock) -> Builder {
    Builder::new()
        .name(name)
        .clock(clock.clone())
        .jitter(Jitter::NONE)
        .backoff(
            Backoff::new(Duration::from_secs(1), 2, Duration::from_secs(4))
                .with_permanent_interval(Duration::from_secs(2)),
        )
        // Long by the manual clock, which the tests move a second per few
        // milliseconds: no fetch times out unless a test wants it to.
        .fetch_timeout(Duration::from_secs(3600))
        .seed(7)
}

fn secs(t: Timestamp) -> f64 {
    t.as_millis() as f64 / 1000.0
}

/// A step of a manual clock: one second, then wake the driver.
fn ticker<'a>(clock: &'a ManualClock, driver: &'a DriverHandle) -> impl FnMut() + 'a {
    move || {
        clock.advance(Duration::from_secs(1));
        driver.wake();
    }
}

fn gauge(view: &View, name: &str) -> f64 {
    view.gauge(name, &[])
        .unwrap_or_else(|| panic!("{name} is not set"))
}

fn state(view: &View, state: &str) -> f64 {
    view.gauge(names::REFRESH_STATE, &[("state", state)])
        .unwrap_or_else(|| panic!("no {state} state gauge"))
}

fn fetches(view: &View, error: &str) -> u64 {
    view.counter(names::FETCHES_TOTAL, &[("error", error)])
}

fn current_expiry(tokens: &TokenHandle) -> (Timestamp, Timestamp) {
    let t = tokens.token().expect("a token");
    (t.stale_at(), t.expires_at())
}

#[test]
fn an_outage_in_numbers() {
    let _log = capture();
    let recording = Recording::global();
    let view = recording.refresher("outage");
    let clock = ManualClock::new(T0);
    let authority = authority(&clock);
    let (tokens, driver) = builder("outage", &clock)
        .spawn_thread(authority.client_credentials("app").build().unwrap())
        .unwrap();
    tokens.wait_ready(HUNG).expect("a first token");
    view.until(
        "the first publication",
        || {},
        |v| v.gauge(names::TOKEN_VALID, &[]) == Some(1.0),
    );

    // Healthy after one fetch.
    assert_eq!(fetches(&view, "none"), 1);
    assert_eq!(
        view.counter(names::FETCHES_TOTAL, &[("outcome", "success")]),
        1
    );
    let durations = view.samples(names::FETCH_DURATION_SECONDS, &[("outcome", "success")]);
    assert_eq!(durations.len(), 1);
    assert!(durations[0] >= 0.0 && durations[0].is_finite());
    assert_eq!(state(&view, "healthy"), 1.0);
    assert_eq!(state(&view, "starting"), 0.0);
    assert_eq!(gauge(&view, names::REFRESH_STATE_CODE), 1.0);
    assert_eq!(gauge(&view, names::REFRESH_CONSECUTIVE_FAILURES), 0.0);
    assert_eq!(view.counter(names::FETCH_RETRIES_TOTAL, &[]), 0);
    let (stale_at, expires_at) = current_expiry(&tokens);
    assert_eq!(
        gauge(&view, names::TOKEN_EXPIRES_AT_TIMESTAMP_SECONDS),
        secs(expires_at)
    );
    assert_eq!(
        gauge(&view, names::TOKEN_STALE_AT_TIMESTAMP_SECONDS),
        secs(stale_at)
    );
    assert_eq!(
        gauge(&view, names::TOKEN_EXPIRES_IN_SECONDS),
        secs(expires_at) - secs(T0)
    );
    assert_eq!(
        gauge(&view, names::TOKEN_STALE_IN_SECONDS),
        secs(stale_at) - secs(T0)
    );
    // The authority's Date header and our clock are the same ManualClock:
    // the estimate is within the header's one-second resolution.
    let skew = gauge(&view, names::CLOCK_SKEW_SECONDS);
    assert!(skew.abs() <= 1.0, "skew {skew}");

    // The countdown moves between two ticks, not only at publication.
    let expires_in = gauge(&view, names::TOKEN_EXPIRES_IN_SECONDS);
    let stale_in = gauge(&view, names::TOKEN_STALE_IN_SECONDS);
    clock.advance(Duration::from_secs(7));
    driver.wake();
    view.until(
        "the gauges to move",
        || {},
        |v| v.gauge(names::TOKEN_EXPIRES_IN_SECONDS, &[]) == Some(expires_in - 7.0),
    );
    assert_eq!(gauge(&view, names::TOKEN_STALE_IN_SECONDS), stale_in - 7.0);
    assert_eq!(
        gauge(&view, names::TOKEN_EXPIRES_AT_TIMESTAMP_SECONDS),
        secs(expires_at)
    );

    // The outage: every request gets a 503.
    authority.set_faults(FaultPlan::new().with(
        Fault::Unavailable { retry_after: None },
        FaultWindow::Always,
    ));
    clock.set(stale_at);
    driver.wake();
    view.until("three failures", ticker(&clock, &driver), |v| {
        v.gauge(names::REFRESH_CONSECUTIVE_FAILURES, &[]) >= Some(3.0)
    });
    assert_eq!(state(&view, "retrying"), 1.0);
    assert_eq!(state(&view, "healthy"), 0.0);
    assert_eq!(gauge(&view, names::REFRESH_STATE_CODE), 2.0);
    // The old token is still valid and served, and its countdown goes on.
    assert_eq!(gauge(&view, names::TOKEN_VALID), 1.0);
    assert_eq!(gauge(&view, names::TOKEN_STALE_IN_SECONDS), 0.0);
    // (The driver may not have handled the last wake-up yet.)
    let now = secs(clock.now());
    view.until(
        "the countdown",
        || {},
        |v| v.gauge(names::TOKEN_EXPIRES_IN_SECONDS, &[]) == Some(secs(expires_at) - now),
    );

    // Until it expires.
    view.until("the token to expire", ticker(&clock, &driver), |v| {
        v.gauge(names::TOKEN_VALID, &[]) == Some(0.0)
    });
    assert_eq!(gauge(&view, names::TOKEN_EXPIRES_IN_SECONDS), 0.0);
    assert_eq!(state(&view, "retrying"), 1.0);

    // Let the fetch in flight (if any) answer, and its failure be
    // published: two first attempts (the first token, the refresh that met
    // the outage), the rest retries.
    view.until(
        "no fetch in flight",
        || {},
        |v| {
            let errors = v.counter(names::FETCHES_TOTAL, &[("outcome", "error")]);
            v.counter(names::FETCHES_TOTAL, &[]) == 2 + v.counter(names::FETCH_RETRIES_TOTAL, &[])
                && v.gauge(names::REFRESH_CONSECUTIVE_FAILURES, &[]) == Some(errors as f64)
        },
    );
    let failures = fetches(&view, "transient");
    assert!(failures >= 3);
    assert_eq!(
        view.counter(names::FETCHES_TOTAL, &[("outcome", "error")]),
        failures
    );
    assert_eq!(
        gauge(&view, names::REFRESH_CONSECUTIVE_FAILURES),
        failures as f64
    );
    // Every attempt after the first failure was a retry.
    assert_eq!(view.counter(names::FETCH_RETRIES_TOTAL, &[]), failures - 1);
    assert_eq!(
        view.samples(names::FETCH_DURATION_SECONDS, &[("outcome", "error")])
            .len() as u64,
        failures
    );

    // Recovery.
    authority.clear_faults();
    view.until("recovery", ticker(&clock, &driver), |v| {
        v.gauge(names::REFRESH_STATE, &[("state", "healthy")]) == Some(1.0)
    });
    assert_eq!(fetches(&view, "none"), 2);
    assert_eq!(gauge(&view, names::REFRESH_CONSECUTIVE_FAILURES), 0.0);
    assert_eq!(gauge(&view, names::TOKEN_VALID), 1.0);
    assert_eq!(view.counter(names::FETCH_RETRIES_TOTAL, &[]), failures);
    // (The gauges are set just before the handles see the new token.)
    view.until(
        "the new token",
        || {},
        |v| {
            let (_, expires_at) = current_expiry(&tokens);
            v.gauge(names::TOKEN_EXPIRES_AT_TIMESTAMP_SECONDS, &[]) == Some(secs(expires_at))
        },
    );
    assert_eq!(
        authority.request_count() as u64,
        view.counter(names::FETCHES_TOTAL, &[])
    );

    drop(tokens);
    driver.shutdown_blocking();
    assert_eq!(state(&view, "stopped"), 1.0);
    assert_bounded(&view);
    // The exporter was told every metric's help text.
    for name in names::ALL {
        assert!(recording.description(name).is_some(), "{name} undescribed");
    }
    assert_eq!(
        recording
            .description(names::FETCH_DURATION_SECONDS)
            .unwrap()
            .0,
        Some(metrics::Unit::Seconds)
    );
}

/// A fetch that hangs past the fetch timeout counts once, as a timeout;
/// its late answer still adds its duration to the histogram.
#[test]
fn a_hung_fetch_is_a_timeout() {
    let recording = Recording::global();
    let view = recording.refresher("hung");
    let clock = ManualClock::new(T0);
    let authority = authority(&clock);
    let (tokens, driver) = builder("hung", &clock)
        .fetch_timeout(Duration::from_secs(5))
        .spawn_thread(authority.client_credentials("app").build().unwrap())
        .unwrap();
    tokens.wait_ready(HUNG).expect("a first token");
    let (stale_at, _) = current_expiry(&tokens);

    authority.set_faults(FaultPlan::new().with(
        Fault::Hang(Duration::from_secs(2)),
        FaultWindow::NextRequests(1),
    ));
    clock.set(stale_at);
    driver.wake();
    view.until("the timeout", ticker(&clock, &driver), |v| {
        v.counter(names::FETCHES_TOTAL, &[("error", "timeout")]) == 1
    });
    // The retry after the timeout succeeds (the fault was for one request):
    // one step past the backoff, and no more, so that the retry does not
    // time out by the manual clock too.
    clock.advance(Duration::from_secs(2));
    driver.wake();
    view.until(
        "the retry",
        || {},
        |v| v.counter(names::FETCHES_TOTAL, &[("outcome", "success")]) == 2,
    );
    assert!(view.counter(names::FETCH_RETRIES_TOTAL, &[]) >= 1);
    // The hung request answers at last: its duration is observed, and it
    // is not counted again.
    view.until(
        "the late answer",
        || {},
        |v| v.samples(names::FETCH_DURATION_SECONDS, &[]).len() == 3,
    );
    let longest = view
        .samples(names::FETCH_DURATION_SECONDS, &[])
        .into_iter()
        .fold(0.0, f64::max);
    assert!(longest >= 2.0, "the hung fetch took {longest} s");
    assert_eq!(view.counter(names::FETCHES_TOTAL, &[]), 3);

    drop(tokens);
    driver.shutdown_blocking();
    assert_bounded(&view);
}

/// A revoked grant: the state is `failed`, the error `grant_revoked`, and
/// the warning says what to do.
#[test]
fn a_revoked_grant_is_failed() {
    let log = capture();
    let recording = Recording::global();
    let view = recording.refresher("revoked");
    let clock = ManualClock::new(T0);
    let authority = authority(&clock);
    let (tokens, driver) = builder("revoked", &clock)
        .refresh_token(authority.issue_refresh_token("app"))
        .spawn_thread(authority.refresh_token_source("app").build().unwrap())
        .unwrap();
    tokens.wait_ready(HUNG).expect("a first token");
    let (stale_at, _) = current_expiry(&tokens);
    authority.revoke_refresh_tokens();
    clock.set(stale_at);
    driver.wake();
    view.until("the failed state", ticker(&clock, &driver), |v| {
        v.gauge(names::REFRESH_STATE, &[("state", "failed")]) == Some(1.0)
    });
    assert_eq!(fetches(&view, "grant_revoked"), 1);
    assert_eq!(gauge(&view, names::REFRESH_STATE_CODE), 3.0);
    assert_eq!(gauge(&view, names::REFRESH_CONSECUTIVE_FAILURES), 1.0);
    assert_eq!(state(&view, "retrying"), 0.0);
    // A 401 now cannot help (the grant is gone): the report is ignored.
    let last = tokens.token().expect("the last token is still served");
    tokens.invalidate(&last);
    view.until(
        "the ignored report",
        || {},
        |v| v.counter(names::INVALIDATIONS_TOTAL, &[("outcome", "ignored")]) == 1,
    );
    drop(last);
    let log = log.0.lock().unwrap().clone();
    assert!(
        log.contains("the user must authorize again"),
        "no hint in the warning: {log}"
    );
    drop(tokens);
    driver.shutdown_blocking();
    assert_bounded(&view);
}

/// A wrong client secret: a permanent error, a span that says so, and a
/// warning that asks whether the client secret is right. Nothing secret
/// is logged.
#[test]
fn invalid_client_says_what_to_check() {
    let log = capture();
    let recording = Recording::global();
    let view = recording.refresher("badclient");
    let clock = ManualClock::new(T0);
    let authority = authority(&clock);
    let source = authority
        .client_credentials("app")
        .client_secret("not-the-secret")
        .build()
        .unwrap();
    let (tokens, driver) = builder("badclient", &clock).spawn_thread(source).unwrap();
    view.until("two failures", ticker(&clock, &driver), |v| {
        v.counter(names::FETCHES_TOTAL, &[("error", "permanent")]) >= 2
    });
    assert!(tokens.token().is_none());
    assert_eq!(state(&view, "retrying"), 1.0);
    assert_eq!(gauge(&view, names::TOKEN_VALID), 0.0);
    assert_eq!(gauge(&view, names::TOKEN_EXPIRES_IN_SECONDS), 0.0);
    drop(tokens);
    driver.shutdown_blocking();

    let log = log.0.lock().unwrap().clone();
    let warning = log
        .lines()
        .find(|l| {
            l.starts_with("WARN")
                && l.contains("token refresh failed")
                && l.contains("invalid_client")
        })
        .unwrap_or_else(|| panic!("no warning in {log}"));
    assert!(
        warning.contains("hint=") && warning.contains("client secret"),
        "{warning}"
    );
    // The span of the refresh, with its fields filled in when it ended.
    assert!(
        log.contains("span freshtoken.refresh refresher=badclient attempt=1"),
        "{log}"
    );
    assert!(log.contains("record outcome=error"), "{log}");
    assert!(log.contains("record error=permanent"), "{log}");
    assert!(log.contains("record duration_ms="), "{log}");
    assert!(!log.contains(CLIENT_SECRET) && !log.contains("not-the-secret"));
    assert_bounded(&view);
}
