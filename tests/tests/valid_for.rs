//! Reads that need a minimum validity (issue 24): `TokenHandle::valid_for`
//! and its waits, against a real local authority. A token valid for less
//! than asked is renewed early, once for many readers; a need no token of
//! the authority's can meet is refused at once, with no request.

use std::sync::Arc;
use std::time::Duration;

use freshtoken::driver::Builder;
use freshtoken::handle::NoValidToken;
use freshtoken::policy::Jitter;
use freshtoken::testing::LocalAuthority;
use freshtoken::{ManualClock, Timestamp};

const T0: Timestamp = Timestamp::from_secs(1_700_000_000);
const HUNG: Duration = Duration::from_secs(30);
const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn a_read_that_needs_longer_validity_renews_early_once_for_many_readers() {
    let clock = ManualClock::new(T0);
    let authority = LocalAuthority::builder()
        .client("svc", "svc-secret-7f3a")
        .token_lifetime(Duration::from_secs(3600))
        .clock(clock.clone())
        .start()
        .expect("start the local authority");
    let source = authority.client_credentials("svc").build().unwrap();
    let (tokens, driver) = Builder::new()
        .clock(clock.clone())
        .jitter(Jitter::NONE)
        .spawn_thread(source)
        .unwrap();
    let first = tokens.wait_ready(HUNG).expect("a first token").clone();
    assert_eq!(authority.request_count(), 1);

    // 40 minutes later the token has 20 left: enough for 10, not for 30.
    clock.advance(40 * MINUTE);
    assert!(tokens.valid_for(10 * MINUTE).is_ok());
    assert_eq!(
        authority.request_count(),
        1,
        "no request for a need the token meets"
    );

    // Eight readers need 30 minutes at once: one early renewal.
    let tokens = Arc::new(tokens);
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let tokens = tokens.clone();
            std::thread::spawn(move || tokens.wait_ready_for(30 * MINUTE, HUNG).map(|t| t.id()))
        })
        .collect();
    let ids: Vec<_> = readers
        .into_iter()
        .map(|r| r.join().unwrap().expect("a token valid for 30 minutes"))
        .collect();
    assert!(ids.iter().all(|id| *id != first.id() && *id == ids[0]));
    assert_eq!(
        authority.request_count(),
        2,
        "one renewal for eight readers"
    );
    let renewed = tokens
        .valid_for(30 * MINUTE)
        .expect("still valid for 30 minutes");
    assert!(renewed.expires_at() >= T0 + 40 * MINUTE + Duration::from_secs(3500));

    // Two hours from hourly tokens: refused at once, nothing asked.
    match tokens.wait_ready_for(120 * MINUTE, HUNG) {
        Err(NoValidToken::NotValidLongEnough {
            needed, lifetime, ..
        }) => {
            assert_eq!(needed, 120 * MINUTE);
            assert!(lifetime <= Duration::from_secs(3600));
        }
        other => panic!("expected NotValidLongEnough, got {other:?}"),
    }
    assert_eq!(authority.request_count(), 2);
    drop(renewed);
    drop(tokens);
    driver.shutdown_blocking();
}
