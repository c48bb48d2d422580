//! A tokio service with OAuth2 client-credentials tokens kept fresh in the
//! background: the driver runs on tokio (the HTTP call on its blocking
//! pool), three tasks take the current token as they would before each API
//! call, and the program prints token ids (never tokens) and the refresh
//! count, then shuts the driver down.
//!
//! ```text
//! cargo run -p freshtoken-examples --example tokio_client_credentials
//! cargo run -p freshtoken-examples --example tokio_client_credentials -- --seconds 10
//! FRESHTOKEN_CLIENT_SECRET=... cargo run -p freshtoken-examples --example tokio_client_credentials -- \
//!     --token-url https://auth.example.com/oauth2/token --client-id my-service
//! ```
//!
//! By default it starts a local test authority that issues 3 s tokens and
//! runs for 5 s. Options (`--seconds`, `--token-url`, `--client-id`,
//! `--client-secret-env`, `--cache-dir`) and exit codes: see support/mod.rs.

mod support;

use std::time::{Duration, Instant};

use freshtoken::driver::Builder;
use freshtoken::runtime::Tokio;
use support::{Options, Reads};

/// A tokio service with client-credentials tokens kept fresh in the background.
#[derive(clap::Parser)]
#[command(about, long_about = None)]
struct Cli {
    #[command(flatten)]
    options: Options,
}

#[tokio::main]
async fn main() {
    let Cli { options } = support::cli();
    let authority = options.authority();
    let cache = options.cache_dir();
    let (tokens, driver) = Builder::new().cache(cache.file("token.json")).spawn(
        Tokio::current().expect("a tokio runtime"),
        authority.client_credentials(),
    );
    let start = Instant::now();
    support::first_token(&tokens, tokio::time::sleep(support::START_TIMEOUT)).await;

    let tasks: Vec<_> = (0..3)
        .map(|n| {
            let tokens = tokens.clone();
            let until = start + options.duration();
            tokio::spawn(async move {
                let mut reads = Reads::default();
                while Instant::now() < until {
                    reads.read(&tokens, &format!("task {n}"), start);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                reads
            })
        })
        .collect();
    let mut readers = Vec::new();
    for task in tasks {
        readers.push(task.await.expect("a reader task"));
    }

    Reads::summary(&readers, &tokens, &authority);
    cache.report(&tokens);
    driver.shutdown().await;
    println!("{} driver stopped", support::at(start));
}
