//! An async-std (or smol) service with OAuth2 client-credentials tokens
//! kept fresh in the background: the async-std driver (which needs no
//! async-std runtime of its own and also serves smol applications) runs the
//! HTTP call on a blocking pool, three tasks take the current token as they
//! would before each API call, and the program prints token ids (never
//! tokens) and the refresh count, then shuts the driver down.
//!
//! ```text
//! cargo run -p freshtoken-examples --example async_std_client_credentials
//! cargo run -p freshtoken-examples --example async_std_client_credentials -- --smol
//! ```
//!
//! `--smol` runs the same code under
//! `smol::block_on` with smol tasks and timers. By default it starts a local
//! test authority that issues 3 s tokens and runs for 5 s. Other options
//! (`--seconds`, `--token-url`, `--client-id`, `--client-secret-env`,
//! `--cache-dir`) and exit codes: see support/mod.rs.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use freshtoken::driver::Builder;
use freshtoken::runtime::AsyncStd;
use support::{Options, Reads};

/// An async-std (or smol) service with client-credentials tokens kept fresh in the background.
#[derive(clap::Parser)]
#[command(about, long_about = None)]
struct Cli {
    #[command(flatten)]
    options: Options,
    /// Run under smol instead of async-std
    #[arg(long)]
    smol: bool,
}

fn main() {
    let Cli { options, smol } = support::cli();
    let executor = match smol {
        true => Executor::Smol,
        false => Executor::AsyncStd,
    };
    println!("running under {executor:?}");
    executor.block_on(run(executor, options));
}

async fn run(executor: Executor, options: Options) {
    let authority = options.authority();
    let cache = options.cache_dir();
    let (tokens, driver) = Builder::new()
        .cache(cache.file("token.json"))
        .spawn(AsyncStd, authority.client_credentials());
    let start = Instant::now();
    support::first_token(&tokens, executor.sleep(support::START_TIMEOUT)).await;

    let tasks: Vec<_> = (0..3)
        .map(|n| {
            let tokens = tokens.clone();
            let until = start + options.duration();
            executor.spawn(async move {
                let mut reads = Reads::default();
                while Instant::now() < until {
                    reads.read(&tokens, &format!("task {n}"), start);
                    executor.sleep(Duration::from_millis(100)).await;
                }
                reads
            })
        })
        .collect();
    let mut readers = Vec::new();
    for task in tasks {
        readers.push(task.await);
    }

    Reads::summary(&readers, &tokens, &authority);
    cache.report(&tokens);
    driver.shutdown().await;
    println!("{} driver stopped", support::at(start));
}

/// The executors this runs on; the application code above is the same.
#[derive(Clone, Copy, Debug)]
enum Executor {
    AsyncStd,
    Smol,
}

type Task<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Executor {
    fn block_on<T>(self, f: impl Future<Output = T>) -> T {
        match self {
            Executor::AsyncStd => async_std::task::block_on(f),
            Executor::Smol => smol::block_on(f),
        }
    }

    fn spawn<T: Send + 'static>(self, f: impl Future<Output = T> + Send + 'static) -> Task<T> {
        match self {
            Executor::AsyncStd => Box::pin(async_std::task::spawn(f)),
            Executor::Smol => Box::pin(smol::spawn(f)),
        }
    }

    async fn sleep(self, d: Duration) {
        match self {
            Executor::AsyncStd => async_std::task::sleep(d).await,
            Executor::Smol => drop(smol::Timer::after(d).await),
        }
    }
}
