//! The invalidation metrics: reports of a rejected token that start a
//! refresh (accepted), wait for the rate limit (rate_limited), or join a
//! refresh already under way or name a token already replaced (collapsed).
//! Time is a ManualClock; the source hands out a new token per fetch and
//! can be held, to keep a refresh under way while a report comes.

mod metrics_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use freshtoken::driver::Builder;
use freshtoken::metrics::names;
use freshtoken::source::FnSource;
use freshtoken::{
    AccessToken, FetchRequest, Jitter, ManualClock, Timestamp, TokenHandle, TokenResponse,
};
use metrics_support::{assert_bounded, Recording, View, HUNG};

const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

/// A gate the source waits at while it is closed.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn set_closed(&self, closed: bool) {
        *self.0 .0.lock().unwrap() = closed;
        self.0 .1.notify_all();
    }
    fn pass(&self) {
        let (closed, changed) = &*self.0;
        let guard = closed.lock().unwrap();
        let _unused = changed
            .wait_timeout_while(guard, HUNG, |closed| *closed)
            .unwrap();
    }
}

fn invalidations(view: &View, outcome: &str) -> u64 {
    view.counter(names::INVALIDATIONS_TOTAL, &[("outcome", outcome)])
}

fn current(tokens: &TokenHandle) -> String {
    tokens
        .token()
        .expect("a token")
        .access_token()
        .expose_secret()
        .to_owned()
}

fn wait_for(tokens: &TokenHandle, expected: &str) {
    let give_up = std::time::Instant::now() + HUNG;
    while tokens
        .token()
        .map(|t| t.access_token().expose_secret() == expected)
        != Some(true)
    {
        assert!(std::time::Instant::now() < give_up, "no {expected}");
        let _ = tokens.wait_changed(Duration::from_millis(20));
    }
}

#[test]
fn invalidations_by_outcome() {
    let recording = Recording::global();
    let view = recording.refresher("invalidate");
    let clock = ManualClock::new(T0);
    let gate = Gate::default();
    let calls = Arc::new(AtomicU64::new(0));
    let (source_gate, counter) = (gate.clone(), calls.clone());
    let source = FnSource::new(move |_req: &FetchRequest| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        source_gate.pass();
        Ok(TokenResponse::new(AccessToken::new(format!("tok-{n}"))).with_expires_in(Some(600)))
    });
    let (tokens, driver) = Builder::new()
        .name("invalidate")
        .clock(clock.clone())
        .jitter(Jitter::NONE)
        .invalidate_interval(Duration::from_secs(5))
        .spawn_thread(source)
        .unwrap();
    tokens.wait_ready(HUNG).expect("a first token");
    let first = tokens.token().unwrap().clone();
    assert_eq!(current(&tokens), "tok-1");

    // A 401 with the current token: a refresh at once.
    tokens.invalidate(&first);
    view.until(
        "the accepted report",
        || {},
        |v| invalidations(v, "accepted") == 1,
    );
    view.until(
        "the second token",
        || {},
        |v| v.counter(names::FETCHES_TOTAL, &[("outcome", "success")]) == 2,
    );
    // (The counter moves just before the handles see the token.)
    wait_for(&tokens, "tok-2");
    let second = tokens.token().unwrap().clone();

    // Another 401 with the first token, already replaced: collapsed.
    tokens.invalidate(&first);
    view.until(
        "the collapsed report",
        || {},
        |v| invalidations(v, "collapsed") == 1,
    );

    // A 401 with the second token within the interval: rate limited, no
    // fetch until the interval has passed.
    tokens.invalidate(&second);
    view.until(
        "the rate-limited report",
        || {},
        |v| invalidations(v, "rate_limited") == 1,
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    clock.advance(Duration::from_secs(5));
    driver.wake();
    view.until(
        "the deferred refresh",
        || {},
        |v| v.counter(names::FETCHES_TOTAL, &[("outcome", "success")]) == 3,
    );
    wait_for(&tokens, "tok-3");
    let third = tokens.token().unwrap().clone();
    // The deferred refresh was not a new report.
    assert_eq!(invalidations(&view, "accepted"), 1);

    // A report that starts a refresh, held at the source; a second report
    // of the same token joins it.
    clock.advance(Duration::from_secs(5));
    gate.set_closed(true);
    tokens.invalidate(&third);
    view.until(
        "the second accepted report",
        || {},
        |v| invalidations(v, "accepted") == 2,
    );
    let give_up = std::time::Instant::now() + HUNG;
    while calls.load(Ordering::SeqCst) < 4 {
        assert!(
            std::time::Instant::now() < give_up,
            "the fetch never started"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    tokens.invalidate(&third);
    view.until(
        "the joined report",
        || {},
        |v| invalidations(v, "collapsed") == 2,
    );
    gate.set_closed(false);
    view.until(
        "the fourth token",
        || {},
        |v| v.counter(names::FETCHES_TOTAL, &[("outcome", "success")]) == 4,
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(invalidations(&view, "ignored"), 0);
    assert_eq!(view.counter(names::INVALIDATIONS_TOTAL, &[]), 5);

    drop(tokens);
    driver.shutdown_blocking();
    assert_bounded(&view);
}
