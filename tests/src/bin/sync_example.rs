//! The README's sync example as a short process, for
//! `tests/sync_example_process.rs`: the same calls in the same order
//! (client credentials with a `read` scope, the blocking driver, a
//! `FileCache`, `wait_ready`, `valid_token`, `shutdown_blocking`, exit),
//! with the test's `LocalAuthority` instead of the example URL.
//!
//! `sync_example <token url> <cache file>`; the secret comes from
//! `CLIENT_SECRET`, as in the README. Prints the README's line,
//! `token <id> expires at <time>`, and exits 0.

use freshtoken::cache::FileCache;

use freshtoken::driver::Builder;

use freshtoken::oauth2::ClientCredentials;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [token_url, cache_file] = args.as_slice() else {
        return Err("usage: sync_example <token url> <cache file>".into());
    };
    let secret = std::env::var("CLIENT_SECRET")?;
    let source = ClientCredentials::builder(token_url.as_str(), "my-app", secret)
        .scope("read")
        .build()?;
    let (tokens, driver) = Builder::new()
        .cache(FileCache::new(cache_file))
        .spawn_thread(source)?;
    tokens.wait_ready(Duration::from_secs(10))?;
    let token = tokens.valid_token()?; // from any thread, as often as you like
    println!("token {} expires at {}", token.id(), token.expires_at()); // never the secret
    drop(token);
    driver.shutdown_blocking();
    Ok(())
}
