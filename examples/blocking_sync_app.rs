//! A plain synchronous program (no async runtime) with OAuth2
//! client-credentials tokens kept fresh by the blocking driver, a thread of
//! its own. Four worker threads take the current token as they would before
//! each API call; the program prints token ids (never tokens) and the
//! refresh count, then shuts the driver down.
//!
//! ```text
//! cargo run -p freshtoken-examples --example blocking_sync_app
//! cargo run -p freshtoken-examples --example blocking_sync_app -- --seconds 10 --cache-dir /tmp/ft
//! ```
//!
//! By default it starts a local test authority that issues 3 s tokens and
//! runs for 5 s. Options (`--seconds`, `--token-url`, `--client-id`,
//! `--client-secret-env`, `--cache-dir`) and exit codes: see support/mod.rs.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use freshtoken::driver::Builder;
use support::{Options, Reads};

/// A synchronous program with client-credentials tokens kept fresh by the blocking driver.
#[derive(clap::Parser)]
#[command(about, long_about = None)]
struct Cli {
    #[command(flatten)]
    options: Options,
}

fn main() {
    let Cli { options } = support::cli();
    let authority = options.authority();
    let cache = options.cache_dir();
    let (tokens, driver) = Builder::new()
        .cache(cache.file("token.json"))
        .spawn_thread(authority.client_credentials())
        .unwrap_or_else(|e| support::fail(&format!("cannot start the driver thread: {e}")));
    let start = Instant::now();
    support::wait_first_token(&tokens);

    let until = start + options.duration();
    let readers: Vec<Reads> = thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|n| {
                let tokens = &tokens;
                scope.spawn(move || {
                    let mut reads = Reads::default();
                    while Instant::now() < until {
                        reads.read(tokens, &format!("thread {n}"), start);
                        thread::sleep(Duration::from_millis(100));
                    }
                    reads
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a worker"))
            .collect()
    });

    Reads::summary(&readers, &tokens, &authority);
    cache.report(&tokens);
    driver.shutdown_blocking();
    println!("{} driver stopped", support::at(start));
}
