//! The drivers never log a secret: every event and span field written while
//! drivers fetch, refresh, fail, get invalidated and stop is captured (by a
//! process-wide subscriber, since drivers log from their own threads) and
//! searched for the access token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshtoken::driver::Builder;
use freshtoken::handle::RefreshState;
use freshtoken::policy::{Backoff, Jitter};
use freshtoken::source::FnSource;
use freshtoken::source::{FetchRequest, TokenResponse};
use freshtoken::{AccessToken, FetchError, ManualClock, RefreshToken, Timestamp};
use freshtoken_tests::log_capture::Capture;

const SECRET: &str = "s3cret-access-token-do-not-log";
const REFRESH_SECRET: &str = "s3cret-refresh-token-do-not-log";

#[test]
fn drivers_never_log_a_secret() {
    let log = Arc::new(Mutex::new(String::new()));
    tracing::subscriber::set_global_default(Capture(log.clone())).expect("first subscriber");

    let clock = ManualClock::new(Timestamp::from_secs(1_000));
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    // Answers, fails transiently, answers again: every logged path.
    let source =
        FnSource::new(
            move |_req: &FetchRequest| match counter.fetch_add(1, Ordering::SeqCst) {
                1 => Err(FetchError::transient("authority unavailable")),
                _ => Ok(TokenResponse::new(AccessToken::new(SECRET))
                    .with_refresh_token(Some(RefreshToken::new(REFRESH_SECRET)))
                    .with_expires_in(Some(60))),
            },
        )
        .refresh_token(RefreshToken::new(REFRESH_SECRET));
    let (tokens, driver) = Builder::new()
        .clock(clock.clone())
        .jitter(Jitter::NONE)
        .backoff(Backoff::new(
            Duration::from_secs(1),
            2,
            Duration::from_secs(1),
        ))
        .spawn_thread(source)
        .expect("thread");
    let token = tokens.wait_ready(Duration::from_secs(20)).expect("token");
    assert_eq!(token.access_token().expose_secret(), SECRET);
    drop(token);

    // A refresh that fails, then one that succeeds.
    clock.advance(Duration::from_secs(31));
    driver.wake();
    // Until the driver has taken in the failure (not only made the call):
    // a clock moved before the retry is scheduled would leave it in the
    // future for ever.
    while !matches!(tokens.status(), RefreshState::Retrying { .. }) {
        tokens
            .wait_changed(Duration::from_millis(20))
            .expect("running");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    clock.advance(Duration::from_secs(5));
    driver.wake();
    while calls.load(Ordering::SeqCst) < 3 {
        tokens
            .wait_changed(Duration::from_millis(20))
            .expect("running");
    }
    tokens.invalidate(&tokens.token().expect("token"));
    driver.shutdown_blocking();

    let log = log.lock().unwrap();
    assert!(log.contains("refreshed the access token"), "{log}");
    assert!(log.contains("token refresh failed"), "{log}");
    assert!(log.contains("token reported as rejected"), "{log}");
    assert!(!log.contains(SECRET), "the access token was logged:{log}");
    assert!(
        !log.contains(REFRESH_SECRET),
        "the refresh token was logged:{log}"
    );
}
