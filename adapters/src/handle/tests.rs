//! The handle's unit tests: publisher and handle in one process, a manual
//! clock, no driver.

use super::publisher::Control;
use super::*;
use freshtoken_core::{AccessToken, ManualClock};
use std::thread;
use std::time::Instant;

fn token(secret: &str, issued: u64, expires: u64) -> Arc<Token> {
    Arc::new(Token::new(
        AccessToken::new(secret),
        Timestamp::from_secs(issued),
        Timestamp::from_secs(expires),
        Timestamp::from_secs(expires),
    ))
}

fn snapshot(token: Option<Arc<Token>>, state: RefreshState) -> Snapshot {
    let mut s = Snapshot::initial();
    s.token = token;
    s.state = state;
    s
}

fn setup() -> (ManualClock, Publisher, TokenHandle) {
    let clock = ManualClock::new(Timestamp::from_secs(100));
    let (p, h) = Publisher::new(Arc::new(clock.clone()));
    (clock, p, h)
}

#[test]
fn handles_and_guards_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<TokenHandle>();
    send_sync::<TokenRef>();
    send_sync::<Publisher>();
    send_sync::<Control>();
    fn send<T: Send>(_: &T) {}
    let (p, h) = Publisher::new(Arc::new(ManualClock::default()));
    send(&h.changed());
    send(&h.ready());
    send(&p.recv());
}

#[test]
fn valid_token_says_why_there_is_none() {
    let (clock, p, h) = setup();
    assert_eq!(
        h.valid_token().unwrap_err(),
        NoValidToken::NotYetFetched { last_error: None }
    );
    let err = FetchError::transient("connection refused");
    p.publish(snapshot(
        None,
        RefreshState::Retrying {
            error: err.clone(),
            attempt: 1,
            next_attempt: Timestamp::from_secs(101),
        },
    ));
    let why = h.valid_token().unwrap_err();
    assert_eq!(why.last_error(), Some(&err));
    assert!(why.to_string().contains("connection refused"), "{why}");

    p.publish(snapshot(
        Some(token("s3cret", 100, 160)),
        RefreshState::Healthy,
    ));
    assert_eq!(
        h.valid_token().unwrap().access_token().expose_secret(),
        "s3cret"
    );

    clock.set(Timestamp::from_secs(160));
    let why = h.valid_token().unwrap_err();
    assert!(
        matches!(why, NoValidToken::Expired { expired_at, .. } if expired_at == Timestamp::from_secs(160))
    );
    assert!(
        h.token().is_some(),
        "token() still returns the expired token"
    );

    p.publish(snapshot(
        Some(token("s3cret", 100, 160)),
        RefreshState::Failed {
            error: FetchError::grant_revoked("invalid_grant"),
        },
    ));
    assert!(matches!(h.valid_token(), Err(NoValidToken::Failed { .. })));
    drop(p);
    assert!(matches!(h.valid_token(), Err(NoValidToken::Failed { .. })));
}

#[test]
fn errors_and_debug_never_show_the_secret() {
    let (clock, p, h) = setup();
    p.publish(snapshot(
        Some(token("s3cret", 100, 160)),
        RefreshState::Healthy,
    ));
    let t = h.token().unwrap();
    assert!(!format!("{t:?} {h:?}").contains("s3cret"));
    clock.set(Timestamp::from_secs(200));
    let why = h.valid_token().unwrap_err();
    assert!(!format!("{why} {why:?}").contains("s3cret"));
}

#[test]
fn commands_are_deduplicated_and_dropping_all_handles_is_a_command() {
    let (_clock, p, h) = setup();
    let t = token("a", 100, 160);
    for _ in 0..10 {
        h.invalidate(&t);
    }
    let h2 = h.clone();
    let reader = h.reader();
    drop(h);
    drop(h2);
    assert_eq!(p.try_recv(), Some(Command::Invalidate(t.id())));
    assert_eq!(p.try_recv(), None);
    drop(reader);
    assert_eq!(p.try_recv(), Some(Command::HandlesDropped));
}

#[test]
fn waits_end_on_publish_timeout_and_close() {
    let (_clock, p, h) = setup();
    assert_eq!(h.wait_changed(Duration::from_millis(10)), Ok(false));
    let why = h.wait_ready(Duration::from_millis(10)).unwrap_err();
    assert!(matches!(why, NoValidToken::NotYetFetched { .. }));

    let h2 = h.clone();
    let waiter = thread::spawn(move || {
        h2.wait_ready(Duration::from_secs(60))
            .map(|t| t.access_token().expose_secret().to_owned())
    });
    // The waiter may or may not be waiting yet; either way it must see it.
    p.publish(snapshot(Some(token("a", 100, 160)), RefreshState::Healthy));
    assert_eq!(waiter.join().unwrap().unwrap(), "a");

    let h3 = h.clone();
    let waiter = thread::spawn(move || h3.wait_changed(Duration::from_secs(60)));
    let control = p.control();
    drop(p);
    assert!(control.wait_closed(Duration::from_secs(60)));
    // Either the waiter saw the close or it started after it.
    assert_eq!(waiter.join().unwrap(), Err(Closed));
    assert_eq!(h.wait_changed(Duration::from_secs(60)), Err(Closed));
}

#[test]
fn reader_sees_new_snapshots() {
    let (_clock, p, h) = setup();
    let mut reader = h.reader();
    assert!(reader.token().is_none());
    p.publish(snapshot(Some(token("a", 100, 160)), RefreshState::Healthy));
    assert_eq!(reader.token().unwrap().access_token().expose_secret(), "a");
    p.publish(snapshot(Some(token("b", 100, 160)), RefreshState::Healthy));
    assert_eq!(reader.token().unwrap().access_token().expose_secret(), "b");
}

#[test]
fn recv_until_returns_commands_sent_from_another_thread() {
    let (_clock, p, h) = setup();
    assert_eq!(
        p.recv_until(Some(Instant::now() + Duration::from_millis(5))),
        None
    );
    let control = p.control();
    let sender = thread::spawn(move || control.send(Command::Shutdown));
    assert_eq!(
        p.recv_until(Some(Instant::now() + Duration::from_secs(60))),
        Some(Command::Shutdown)
    );
    sender.join().unwrap();
    drop(h);
}

#[test]
fn a_permanent_first_failure_ends_the_wait_at_once() {
    let (_clock, p, h) = setup();
    let h2 = h.clone();
    let waiter = thread::spawn(move || h2.wait_ready(Duration::from_secs(600)));
    // A transient failure does not end it...
    p.publish(snapshot(
        None,
        RefreshState::Retrying {
            error: FetchError::transient("connection refused"),
            attempt: 1,
            next_attempt: Timestamp::from_secs(101),
        },
    ));
    thread::sleep(Duration::from_millis(20));
    assert!(!waiter.is_finished());
    // ...a wrong client secret does, with that error.
    p.publish(snapshot(
        None,
        RefreshState::Retrying {
            error: FetchError::permanent("invalid_client"),
            attempt: 2,
            next_attempt: Timestamp::from_secs(400),
        },
    ));
    let why = waiter.join().unwrap().unwrap_err();
    assert_eq!(
        why.last_error().map(FetchError::kind),
        Some(FetchErrorKind::Permanent)
    );
    let ready = futures::executor::block_on(h.ready());
    assert!(matches!(ready, Err(NoValidToken::NotYetFetched { .. })));
}

#[test]
fn a_watch_never_misses_a_change_between_read_and_wait() {
    let (_clock, p, h) = setup();
    let mut watch = h.watch();
    assert!(!watch.has_changed());
    assert_eq!(watch.wait_changed(Duration::from_millis(5)), Ok(false));
    // Published before the wait starts: a plain `changed()` would miss it.
    p.publish(snapshot(Some(token("a", 100, 160)), RefreshState::Healthy));
    assert!(watch.has_changed());
    futures::executor::block_on(watch.changed()).unwrap();
    assert!(!watch.has_changed());
    p.publish(snapshot(Some(token("b", 100, 160)), RefreshState::Healthy));
    let seen = watch.snapshot_and_update();
    assert_eq!(
        seen.token.as_ref().unwrap().access_token().expose_secret(),
        "b"
    );
    assert_eq!(watch.wait_changed(Duration::from_millis(5)), Ok(false));
    drop(p);
    assert_eq!(watch.wait_changed(Duration::from_secs(60)), Err(Closed));
}

/// A token issued at 100 s, stale at 145 s, expired at 160 s, whose life
/// on the monotonic clock counts from the same 100 s (a `ManualClock`'s
/// monotonic reading starts at its wall reading).
fn anchored(secret: &str) -> Snapshot {
    let token = Arc::new(Token::new(
        AccessToken::new(secret),
        Timestamp::from_secs(100),
        Timestamp::from_secs(145),
        Timestamp::from_secs(160),
    ));
    let mut s = snapshot(Some(token), RefreshState::Healthy);
    s.life = Some(freshtoken_core::MonoLife {
        stale_at: freshtoken_core::MonoTime::from_millis(145_000),
        expires_at: freshtoken_core::MonoTime::from_millis(160_000),
    });
    s
}

#[test]
fn a_wall_clock_stepped_back_never_makes_an_expired_token_valid() {
    let (clock, p, h) = setup();
    p.publish(anchored("at"));
    assert!(h.valid_token().is_ok());
    // 70 s pass, and the wall clock is stepped back 120 s meanwhile: the
    // wall clock says 50 s, before the token was even issued.
    clock.advance(Duration::from_secs(70));
    clock.set(Timestamp::from_secs(50));
    let why = h.valid_token().unwrap_err();
    assert!(matches!(why, NoValidToken::Expired { .. }), "{why:?}");
    assert!(matches!(
        h.wait_ready(Duration::ZERO).unwrap_err(),
        NoValidToken::Expired { .. }
    ));
}

#[test]
fn a_stale_read_wakes_the_driver_once_per_token_and_at_most_every_100_ms() {
    let (clock, p, h) = setup();
    p.publish(anchored("a"));
    // Fresh: reads send nothing.
    for _ in 0..3 {
        assert!(h.valid_token().is_ok());
    }
    assert_eq!(p.try_recv(), None);

    // The wall clock steps forward past the stale point (a resume the
    // driver's timer has not seen): the first read wakes the driver, once.
    clock.set(Timestamp::from_secs(150));
    assert!(h.valid_token().is_ok());
    assert_eq!(p.try_recv(), Some(Command::Stale));
    clock.advance(Duration::from_secs(1));
    assert!(h.valid_token().is_ok());
    assert!(h.wait_ready(Duration::ZERO).is_ok());
    assert_eq!(p.try_recv(), None, "one wake per token");

    // Another token, stale and expired on the monotonic clock only (the
    // wall clock is stepped back to its issue): one wake for it too, as
    // the last was a second ago.
    clock.set(Timestamp::from_secs(100));
    p.publish(with_life(anchored("b"), 100_000, 100_500));
    assert!(h.valid_token().is_err(), "expired by the monotonic clock");
    assert_eq!(p.try_recv(), Some(Command::Stale));

    // A third one within 100 ms of that wake: not yet.
    p.publish(with_life(anchored("c"), 100_000, 100_500));
    assert!(h.valid_token().is_err());
    assert_eq!(p.try_recv(), None, "rate limited");
    clock.advance(Duration::from_millis(100));
    assert!(h.valid_token().is_err());
    assert_eq!(p.try_recv(), Some(Command::Stale));
}

/// `s` with its monotonic stale and expiry points (milliseconds) replaced.
fn with_life(mut s: Snapshot, stale_ms: u64, expires_ms: u64) -> Snapshot {
    s.life = Some(freshtoken_core::MonoLife {
        stale_at: freshtoken_core::MonoTime::from_millis(stale_ms),
        expires_at: freshtoken_core::MonoTime::from_millis(expires_ms),
    });
    s
}
