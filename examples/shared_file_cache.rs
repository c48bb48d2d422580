//! Two processes sharing one token through a file cache: the first gets a
//! token from the authority and stores it; the second, started while the
//! first runs, takes the token from the cache and makes no request. The
//! first process owns the local authority, so it starts the second itself
//! (this program again, with `--second`) and then reads the authority's
//! request log to show the second made zero requests.
//!
//! ```text
//! cargo run -p freshtoken-examples --example shared_file_cache
//! ```
//!
//! For this demonstration the local authority's tokens outlive the run, so
//! no refresh is due; refreshes shared through a cache and its lease are in
//! the `redis_fleet` example. The second process can also be started by
//! hand (the first prints the command). Options and exit codes: see
//! support/mod.rs; it exits with 1 too if the second process asked the
//! authority for a token.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use freshtoken::driver::Builder;
use support::Options;

/// Two processes sharing one token through a file cache.
#[derive(clap::Parser)]
#[command(about, long_about = None)]
struct Cli {
    #[command(flatten)]
    options: Options,
    /// Run as the second process (the first starts it with this flag)
    #[arg(long)]
    second: bool,
}

fn main() {
    let Cli { options, second } = support::cli();
    let who = if second { "second" } else { "first" };
    let authority = options.authority();
    if let Some(local) = &authority.local {
        local.set_token_lifetime(options.duration() * 2 + Duration::from_secs(10));
    }
    let cache = options.cache_dir();
    let (tokens, driver) = Builder::new()
        .cache(cache.file("token.json"))
        .spawn_thread(authority.client_credentials())
        .unwrap_or_else(|e| support::fail(&format!("cannot start the driver thread: {e}")));
    let start = Instant::now();
    let id = support::wait_first_token(&tokens);
    let fetched = tokens.snapshot().tokens_fetched;
    let how = if fetched == 0 {
        "taken from the cache"
    } else {
        "fetched from the authority"
    };
    println!(
        "{} {who} process (pid {}): token {id}, {how}",
        support::at(start),
        std::process::id()
    );

    if second {
        std::thread::sleep(options.duration());
        let requests = tokens.snapshot().tokens_fetched;
        println!(
            "{} second process: {requests} token requests",
            support::at(start)
        );
        return driver.shutdown_blocking();
    }

    let before = authority.local.as_ref().map(|a| a.request_count());
    let mut command = Command::new(std::env::current_exe().expect("this program's path"));
    command.args([
        "--second",
        "--token-url",
        &authority.url,
        "--client-id",
        &authority.client_id,
    ]);
    command.arg("--cache-dir").arg(&cache.path);
    command.args(["--seconds", &options.seconds.to_string()]);
    println!("{} starting: {command:?}", support::at(start));
    // The secret goes through the environment, never the command line.
    command.env(
        "FRESHTOKEN_CLIENT_SECRET",
        authority.secret().expose_secret(),
    );
    let status = command.status();
    let own = tokens.snapshot().tokens_fetched - fetched;
    driver.shutdown_blocking();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => support::fail(&format!("the second process failed: {status}")),
        Err(e) => support::fail(&format!("cannot run the second process: {e}")),
    }
    let (Some(local), Some(before)) = (&authority.local, before) else {
        return;
    };
    let second = (local.request_count() - before) as u64 - own;
    println!("authority: {} token requests in all; while the second process ran, {own} by the first and {second} by the second", local.request_count());
    if second != 0 {
        support::fail("the second process asked the authority for a token");
    }
}
