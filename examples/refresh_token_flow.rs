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
//! `FRESHTOKEN_REFRESH_TOKEN`, or from the cache in `--cache-dir`. When
//! the authority answers `invalid_grant` (the grant was revoked or has
//! expired), it says so and exits with 1: only a new sign-in helps.
//! `--revoke-at N` revokes the local authority's refresh tokens N seconds
//! in, to show that. Other options and exit codes: `--help` and
//! support/mod.rs.

mod support;

use std::time::Instant;

use freshtoken::cache::TokenCache;
use freshtoken::driver::Builder;
use freshtoken::{FetchErrorKind, RefreshToken, TokenHandle};
use support::Options;

/// The refresh-token grant with rotation, the newest refresh token kept in a file cache.
#[derive(clap::Parser)]
#[command(about, long_about = None)]
struct Cli {
    #[command(flatten)]
    options: Options,
    /// Revoke the local authority's refresh tokens after this many seconds
    /// (a user signing out everywhere): the example then exits with 1
    #[arg(long, value_name = "SECS")]
    revoke_at: Option<f64>,
}

/// Exits with 1 if the authority refused the refresh token for good.
fn check_grant(tokens: &TokenHandle) {
    if let Some(e) = tokens
        .status()
        .last_error()
        .filter(|e| e.kind() == FetchErrorKind::GrantRevoked)
    {
        support::fail(&format!(
            "the grant was revoked or has expired ({e}); no refresh can succeed: sign in again \
             for a new refresh token"
        ));
    }
}

fn main() {
    let Cli { options, revoke_at } = support::cli();
    if revoke_at.is_some_and(|s| !s.is_finite() || s < 0.0) {
        support::fail("--revoke-at wants a number of seconds");
    }
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
    let mut revoke_at = revoke_at.map(|s| start + std::time::Duration::from_secs_f64(s));
    if revoke_at.is_some() && authority.local.is_none() {
        support::fail("--revoke-at needs the local authority (no --token-url)");
    }
    loop {
        check_grant(&tokens);
        if let (Some(at), Some(local)) = (revoke_at, &authority.local) {
            if Instant::now() >= at {
                local.revoke_refresh_tokens();
                println!("{} the authority revoked the grant", support::at(start));
                revoke_at = None;
            }
        }
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
        let wake = revoke_at.map_or(left, |at| {
            left.min(at.saturating_duration_since(Instant::now()))
        });
        if left.is_zero() || tokens.wait_changed(wake).is_err() {
            break;
        }
    }
    check_grant(&tokens);

    let newest = tokens
        .token()
        .and_then(|t| t.refresh_token().map(|r| r.fingerprint()));
    let cached = cache_file.load().ok().flatten();
    let in_cache = cached
        .as_ref()
        .and_then(|t| t.refresh_token().map(|r| r.fingerprint()));
    let rotations = tokens.snapshot().tokens_fetched;
    println!(
        "{rotations} refreshes, each rotating the refresh token; authority: {} token requests",
        authority.requests()
    );
    driver.shutdown_blocking();
    cache.report(&tokens);
    if newest.is_none() || newest != in_cache {
        support::fail("the cache does not hold the newest refresh token");
    }
    println!(
        "the cache holds the newest refresh token ({})",
        newest.expect("checked")
    );
}
