//! `FileSource` reading the agent's token file through 50 refreshes: every
//! read a whole token, and the consumer's driver never serves an expired
//! token while the agent is healthy.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use freshtoken::driver::Builder;
use freshtoken::policy::LifetimePolicy;
use freshtoken::source::FileSource;
use freshtoken::testing::TokenRejection;
use freshtoken::{Clock, SystemClock};
use support::{json_token_file, one_token, wait_for, Agent, OneToken};

#[test]
fn file_source_follows_the_agent_through_50_refreshes() {
    // AGENT_FS_REFRESHES=N runs a shorter (or longer) version by hand.
    let refreshes_env = std::env::var("AGENT_FS_REFRESHES")
        .ok()
        .and_then(|v| v.parse().ok());
    let refreshes: usize = refreshes_env.unwrap_or(50);
    // 3 s tokens: the agent renews each after 0.75 to 1.5 s, so the file
    // always holds a token with 1.5 s or more left (a host stall shorter
    // than that is invisible).
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("api.json");
    let OneToken {
        authority,
        config,
        socket,
    } = one_token(
        dir.path(),
        "agent.sock",
        Some(Duration::from_secs(3)),
        &json_token_file(&token_file),
    );
    let mut agent = Agent::start(&config, &socket, dir.path(), &[]);
    agent.wait_healthy(Duration::from_secs(10));
    wait_for(Duration::from_secs(5), || token_file.exists().then_some(())).unwrap();

    // The consumer: the library's driver over a FileSource, re-reading on
    // change.
    // Tokens this short need the driver's shortest lifetime (1 s by
    // default) lowered, and the source's minimum with it: otherwise a token
    // read with just under a second left is refused, close to where the
    // agent renews a 3 s token.
    let source = FileSource::new(&token_file).min_remaining(Duration::from_millis(200));
    let (tokens, driver) = Builder::new()
        .lifetime(
            LifetimePolicy::default()
                .with_lifetime_bounds(Duration::from_millis(100), Duration::from_secs(3_600)),
        )
        .invalidate_interval(Duration::from_millis(50))
        .spawn_thread(source.clone())
        .unwrap();
    let watch = source.watch(&tokens, Duration::from_millis(20)).unwrap();
    tokens
        .wait_ready(Duration::from_secs(5))
        .expect("a first token from the file");

    let stop = Arc::new(AtomicBool::new(false));
    // Raw reads of the file through the source, every millisecond.
    let reader = {
        let stop = stop.clone();
        let source = source.clone();
        std::thread::spawn(move || {
            let (mut reads, mut failed, mut expired) = (0u64, Vec::new(), 0u64);
            let mut least_left = i64::MAX;
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                reads += 1;
                match source.read() {
                    Ok(t) => {
                        let now = SystemClock.now();
                        if t.expires_at <= now {
                            expired += 1;
                        }
                        least_left = least_left.min(t.expires_at.signed_millis_since(now));
                        let s = t.access_token.expose_secret().to_owned();
                        if seen.last() != Some(&s) {
                            seen.push(s);
                        }
                    }
                    Err(e) => failed.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            eprintln!("least time left on a token in the file: {least_left} ms");
            (reads, failed, expired, seen)
        })
    };
    // What the consumer's handle serves, every millisecond.
    let server = {
        let stop = stop.clone();
        let tokens = tokens.clone();
        std::thread::spawn(move || {
            let (mut polls, mut invalid) = (0u64, Vec::new());
            let mut served = HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                polls += 1;
                match tokens.valid_token() {
                    Ok(t) => {
                        served.insert(t.access_token().expose_secret().to_owned());
                    }
                    Err(e) => invalid.push(format!("{:?}: {e}", SystemClock.now())),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (polls, invalid, served)
        })
    };

    let start = authority.issued_count();
    let done = wait_for(Duration::from_secs(90), || {
        (authority.issued_count() >= start + refreshes).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let (reads, failed, expired, seen) = reader.join().unwrap();
    let (polls, invalid, served) = server.join().unwrap();
    drop(watch);
    driver.shutdown_blocking();
    assert!(
        done.is_some(),
        "the agent did not refresh {refreshes} times: {}",
        agent.log_text()
    );
    // The agent was healthy throughout: every request was answered.
    assert!(authority.requests().iter().all(|r| r.fault.is_none()));
    eprintln!(
        "{refreshes} refreshes: {reads} file reads ({} failed, {expired} expired), {} distinct tokens read; \
         consumer: {polls} polls, {} without a valid token, {} distinct tokens served",
        failed.len(),
        seen.len(),
        invalid.len(),
        served.len()
    );
    assert!(
        failed.is_empty(),
        "reads that were not a whole token: {failed:?}"
    );
    assert_eq!(
        expired, 0,
        "the file held an expired token while the agent was healthy"
    );
    assert!(seen.len() >= refreshes, "read {} tokens", seen.len());
    assert!(
        invalid.is_empty(),
        "the consumer had no valid token: {invalid:?}"
    );
    // The consumer followed the file, not just its first token.
    assert!(
        served.len() >= refreshes / 2,
        "served only {} tokens",
        served.len()
    );
    for t in &served {
        assert_ne!(
            authority.validate_access_token(t).err(),
            Some(TokenRejection::Unknown)
        );
    }
}
