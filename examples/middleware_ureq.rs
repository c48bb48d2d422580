//! Calling an API from a sync program with ureq 3: `AuthAgent` wraps an
//! agent with freshtoken's middleware (the token on every request) and
//! runs a closure that builds the request, once more with a new token when
//! the API rejected the old one. The driver is the blocking one; the API
//! (hyper) runs on a small tokio runtime of its own.
//!
//! ```text
//! cargo run -p freshtoken-examples --example middleware_ureq
//! ```

#[path = "api_support/mod.rs"]
mod api_support;

use std::time::Duration;

use freshtoken::driver::Builder;
use freshtoken::middleware::ureq::AuthAgent;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime for the example API");
    let authority = api_support::authority();
    let api = runtime.block_on(api_support::Api::start(authority.clone()));
    let source = match authority.client_credentials("example-service").build() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let (tokens, driver) = match Builder::new().spawn_thread(source) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("error: the refresher thread could not start: {e}");
            std::process::exit(1);
        }
    };
    let client = AuthAgent::new(
        tokens.clone(),
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))),
    );
    let url = api.url("/orders");
    for round in 1..=4 {
        if round == 3 {
            let n = authority.revoke_access_tokens();
            println!("the API revoked {n} token(s)");
        }
        match client.run(|agent| agent.post(&url).send("{\"order\":42}")) {
            Ok(r) => println!("request {round}: {}", r.status()),
            Err(e) => {
                eprintln!("error: request {round} failed: {e}");
                std::process::exit(1);
            }
        }
    }
    let (accepted, rejected) = api.counts();
    println!(
        "the API accepted {accepted} and rejected {rejected} request(s); the authority issued {} token(s)",
        authority.issued_count()
    );
    drop(client);
    driver.shutdown_blocking();
    if (accepted, rejected) != (4, 1) {
        eprintln!("error: expected 4 accepted and 1 rejected (replayed once)");
        std::process::exit(1);
    }
}
