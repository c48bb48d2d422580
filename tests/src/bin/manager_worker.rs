//! One process of the token-manager file-cache test
//! (tests/tests/token_manager.rs): a `TokenManager` whose keys share a
//! cache directory with other processes. It reads three keys' tokens,
//! prints one line per key, `KEY <cache name> <token id>`, shuts the
//! manager down (so every token is stored) and exits.
//!
//! Usage: `manager_worker TOKEN_URL CLIENT_ID CACHE_DIR`; the client
//! secret comes from `FRESHTOKEN_TEST_SECRET`.

use std::time::Duration;

use freshtoken::manager::{TokenKey, TokenManager};
use freshtoken::oauth2::ClientCredentials;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, token_url, client, dir] = args.as_slice() else {
        eprintln!("usage: manager_worker <token url> <client id> <cache dir>");
        std::process::exit(2);
    };
    let secret = std::env::var("FRESHTOKEN_TEST_SECRET").unwrap_or_default();
    let (token_url, dir) = (token_url.clone(), std::path::PathBuf::from(dir));
    let files = dir.clone();
    let manager = TokenManager::builder()
        .cache(move |key: &TokenKey| key.file_cache(&dir))
        .build(move |key: &TokenKey, builder| {
            let source = key
                .apply(ClientCredentials::builder(
                    token_url.clone(),
                    key.client(),
                    secret.clone(),
                ))
                .build()?;
            Ok(builder.spawn_thread(source)?)
        });
    let mut keys = Vec::new();
    for audience in ["orders", "billing", "search"] {
        let key = TokenKey::new(client.clone()).with_audience(audience);
        keys.push(key.clone());
        let handle = manager.handle(key.clone());
        match handle.wait_ready(Duration::from_secs(20)) {
            Ok(token) => println!("KEY {} {}", key.cache_name(), token.id()),
            Err(e) => {
                eprintln!("manager_worker: no token for {audience}: {e}");
                std::process::exit(1);
            }
        }
    }
    // A token is stored just after it is published, and today's drivers
    // do not yet drain a store that had not started when the shutdown
    // came: wait (bounded) until every key's file is there.
    for key in &keys {
        let path = files.join(format!("{}.json", key.cache_name()));
        for _ in 0..500 {
            if path.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    manager.shutdown_blocking();
}
