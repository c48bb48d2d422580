//! What the machine costs a driver.
//!
//! * `tick_steady`: one `handle_input(Tick)` plus draining `poll_output` while
//!   a fresh token is held: the work a driver does at every heartbeat.
//! * `refresh_cycle`: a whole refresh through cache and lease (load, lease,
//!   re-read, fetch, publish, store, release): the machine's share of a refresh.
//! * `simulate_10k_24h`: the fleet simulator, 10,000 instances sharing a
//!   cache with a lease, 24 virtual hours of hourly tokens.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use freshtoken_core::sim::{CacheMode, Scenario};
use freshtoken_core::*;

const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

/// Drains the outputs: the timeout, and the id of the last request sent.
fn drain(m: &mut RefreshMachine) -> (Timestamp, Option<RequestId>) {
    let mut id = None;
    loop {
        match m.poll_output() {
            Output::Action(a) => {
                id = a.request_id().or(id);
                black_box(a);
            }
            Output::Timeout(at) => return (at, id),
        }
    }
}

fn tick_steady(c: &mut Criterion) {
    let mut m = RefreshMachine::new(MachineConfig::default());
    m.handle_input(Input::Start, T0);
    let (_, id) = drain(&mut m);
    let answer = TokenResponse::new(AccessToken::new("t")).with_expires_in(Some(3600));
    m.handle_input(Input::Fetched(id.expect("a fetch"), Ok(answer)), T0);
    drain(&mut m);
    let now = T0 + Duration::from_secs(30);
    c.bench_function("tick_steady", |b| {
        b.iter(|| {
            m.handle_input(Input::Tick, black_box(now));
            black_box(drain(&mut m))
        })
    });
}

fn refresh_cycle(c: &mut Criterion) {
    let mut config = MachineConfig::default();
    config.cache = true;
    let mut m = RefreshMachine::new(config);
    let mut now = T0;
    m.handle_input(Input::Start, now);
    let (_, mut id) = drain(&mut m);
    // Start is waiting for the cache read, like every refresh below.
    let mut refresh_at = now;
    let mut n = 0u64;
    c.bench_function("refresh_cycle", |b| {
        b.iter(|| {
            // Whatever phase we are in, answer it; one iteration = one refresh.
            now = now.max(refresh_at);
            if n > 0 {
                m.handle_input(Input::Tick, now);
                id = drain(&mut m).1;
            }
            let mut answer = |m: &mut RefreshMachine, input: fn(RequestId) -> Input| {
                m.handle_input(input(id.expect("a request")), now);
                id = drain(m).1;
            };
            answer(&mut m, |id| Input::CacheLoaded(id, Ok(None)));
            answer(&mut m, |id| Input::Lease(id, Ok(LeaseOutcome::Granted)));
            answer(&mut m, |id| Input::CacheLoaded(id, Ok(None)));
            n += 1;
            let token =
                TokenResponse::new(AccessToken::new(format!("t{n}"))).with_expires_in(Some(3600));
            m.handle_input(Input::Fetched(id.expect("a fetch"), Ok(token)), now);
            id = drain(&mut m).1;
            m.handle_input(Input::Stored(id.expect("a store"), Ok(())), now);
            (refresh_at, id) = drain(&mut m);
        })
    });
    // The loop must really have refreshed every time.
    assert_eq!(m.stats().tokens_fetched, n);
    assert_eq!(m.stats().ignored_inputs, 0);
}

fn simulate(c: &mut Criterion) {
    let mut g = c.benchmark_group("simulate");
    g.sample_size(10);
    g.bench_function("simulate_10k_24h", |b| {
        b.iter(|| {
            let r = Scenario::new(10_000)
                .cache(CacheMode::SharedWithLease)
                .start_spread(Duration::from_secs(60))
                .run();
            black_box(r)
        })
    });
    g.finish();
}

criterion_group!(benches, tick_steady, refresh_cycle, simulate);
criterion_main!(benches);
