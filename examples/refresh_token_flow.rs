//! The OAuth2 refresh-token grant with rotation: every refresh spends the
//! refresh token and gets a new one, and the file cache always holds the
//! newest, so a restarted program carries on from it instead of from a spent
//! one. The program prints each access token's id and the fingerprints of
//! the refresh tokens in use and in the cache (never a token itself).
//!
//! ```text
//! cargo run -p freshtoken-examples --example refresh_token_flow
//! FRESHTOKEN_REFRESH_TOKEN=... FRESHTOKEN_CLIENT_SECRET=... cargo run -p freshtoken-examples \
//!     --example refresh_token_flow -- --token-url https://auth.example.com/token --cache-dir ~/.cache/app
//! ```
//!
//! By default it starts a local test authority (3 s access tokens, rotating
//! refresh tokens) and asks it for the first refresh token, as a login would.
//! With `--token-url`, the first refresh token comes from
//! `FRESHTOKEN_REFRESH_TOKEN`, or from the cache in `--cache-dir`. Other
//! options and exit codes: see support/mod.rs.

mod support;

use std::time::Instant;

use freshtoken::cache::TokenCache;
use freshtoken::driver::Builder;
use freshtoken::RefreshToken;
use support::Options;

fn main() {
    let options = Options::parse(&[], &[]);
    let authority = options.authority();
    let cache = options.cache_dir();
    let builder = Builder::new().cache(cache.file("token.json"));
    let first = match (&authority.local, std::env::var("FRESHTOKEN_REFRESH_TOKEN")) {
        (Some(local), _) => Some(local.issue_refresh_token(&authority.client_id)),
        (None, Ok(token)) => Some(RefreshToken::new(token)),
        (None, Err(_)) => None,
    };
    let cached = cache.file("token.json").load().ok().flatten();
    if first.is_none() && cached.is_none_or(|t| t.refresh_token().is_none()) {
        support::fail("no refresh token: set FRESHTOKEN_REFRESH_TOKEN or point --cache-dir at a cache that holds one");
    }
    if let Some(first) = &first {
        println!("first refresh token   {}", first.fingerprint());
    }
    let (tokens, driver) = builder
        .spawn_thread(authority.refresh_token_source(first))
        .unwrap_or_else(|e| support::fail(&format!("cannot start the driver thread: {e}")));
    let start = Instant::now();
    support::wait_first_token(&tokens);

    // Another view of the same file, as a restarted program would read it.
    let cache_file = cache.file("token.json");
    let fingerprint =
        |t: Option<&RefreshToken>| t.map_or("none".into(), |t| t.fingerprint().to_string());
    let mut last = None;
    let until = start + options.duration();
    loop {
        if let Some(token) = tokens.token().filter(|t| Some(t.id()) != last) {
            last = Some(token.id());
            let cached = cache_file.load().ok().flatten();
            println!(
                "{} access token {}  refresh token {}  cached refresh token {}",
                support::at(start),
                token.id(),
                fingerprint(token.refresh_token()),
                fingerprint(cached.as_ref().and_then(|t| t.refresh_token())),
            );
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || tokens.wait_changed(left).is_err() {
            break;
        }
    }

    let newest = tokens
        .token()
        .and_then(|t| t.refresh_token().map(|r| r.fingerprint()));
    let cached = cache_file.load().ok().flatten();
    let in_cache = cached
        .as_ref()
        .and_then(|t| t.refresh_token().map(|r| r.fingerprint()));
    let rotations = tokens.snapshot().fetches;
    println!(
        "{rotations} refreshes, each rotating the refresh token; authority: {} token requests",
        authority.requests()
    );
    driver.shutdown_blocking();
    if newest.is_none() || newest != in_cache {
        support::fail("the cache does not hold the newest refresh token");
    }
    println!(
        "the cache holds the newest refresh token ({})",
        newest.expect("checked")
    );
}
