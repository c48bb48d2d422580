//! A fleet of instances sharing one token through Redis: each instance
//! (a thread here, a pod in production) runs its own driver with its own
//! `RedisCache`, and the cache's lease makes one instance fetch while the
//! others wait and take its token. The authority sees about one request per
//! refresh period, however many instances there are.
//!
//! ```text
//! cargo run -p freshtoken-examples --example redis_fleet
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run -p freshtoken-examples --example redis_fleet -- --instances 8
//! ```
//!
//! Redis: `REDIS_URL`, else a `redis-server` from PATH started on a free
//! port (its working folder is the cache folder, `--cache-dir`). By default
//! it starts a local test authority that issues 3 s tokens and runs 4
//! instances for 5 s. Other options and exit codes: see support/mod.rs; it
//! exits with 1 too when Redis is unreachable.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use freshtoken::cache::{RedisCache, TokenCache};
use freshtoken::driver::Builder;
use support::{Options, Reads, RedisServer};

/// A fleet of instances sharing one token through Redis (REDIS_URL, else a redis-server it starts).
#[derive(clap::Parser)]
#[command(about, long_about = None)]
struct Cli {
    #[command(flatten)]
    options: Options,
    /// How many instances (threads, each with its own driver and RedisCache)
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    instances: u64,
}

fn main() {
    let Cli { options, instances } = support::cli();
    let authority = options.authority();
    let dir = options.cache_dir();
    let (url, _server) = RedisServer::from_env_or_start(&dir.path);
    // A key of this run's own, so a token left by another run is not used.
    let key = format!("freshtoken-example:{}", std::process::id());
    let cache = || {
        RedisCache::new(&url, key.clone())
            .unwrap_or_else(|e| support::fail(&format!("bad Redis URL: {e}")))
    };
    if let Err(e) = cache().load() {
        support::fail(&format!("Redis is unreachable: {e}"));
    }

    let start = Instant::now();
    let until = start + options.duration();
    let results: Vec<(Reads, u64)> = thread::scope(|scope| {
        let fleet: Vec<_> = (0..instances)
            .map(|n| {
                let (cache, source) = (cache(), authority.client_credentials());
                scope.spawn(move || {
                    let (tokens, driver) = Builder::new()
                        .cache(cache)
                        .thread_name(format!("freshtoken-{n}"))
                        .spawn_thread(source)
                        .unwrap_or_else(|e| support::fail(&format!("no driver thread: {e}")));
                    support::wait_first_token(&tokens);
                    let mut reads = Reads::default();
                    while Instant::now() < until {
                        reads.read(&tokens, &format!("instance {n}"), start);
                        thread::sleep(Duration::from_millis(100));
                    }
                    let fetched = tokens.snapshot().tokens_fetched;
                    driver.shutdown_blocking();
                    (reads, fetched)
                })
            })
            .collect();
        fleet
            .into_iter()
            .map(|i| i.join().expect("an instance"))
            .collect()
    });

    let fetched: Vec<u64> = results.iter().map(|(_, f)| *f).collect();
    let readers: Vec<Reads> = results.into_iter().map(|(r, _)| r).collect();
    let seen: std::collections::BTreeSet<_> = readers.iter().flat_map(|r| &r.tokens).collect();
    println!(
        "{instances} instances used {} distinct tokens; tokens fetched per instance: {fetched:?}",
        seen.len()
    );
    println!(
        "authority: {} token requests for {instances} instances (without the shared cache: about {})",
        authority.requests(),
        seen.len() * instances as usize
    );
}
