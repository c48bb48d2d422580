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
    let api_support::NoFlags {} = api_support::cli();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime for the example API");
    let authority = api_support::authority();
    let api = runtime.block_on(api_support::Api::start(authority.clone()));
    let source = api_support::source(&authority);
    let (tokens, driver) = match Builder::new().spawn_thread(source) {
        Ok(pair) => pair,
        Err(e) => api_support::die(&format!("the refresher thread could not start: {e}")),
    };
    let client = AuthAgent::new(
        tokens.clone(),
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))),
    );
    let url = api.url("/orders");
    for round in 1..=api_support::ROUNDS {
        api_support::before_round(round, &authority);
        match client.run(|agent| agent.post(&url).send("{\"order\":42}")) {
            Ok(r) => println!("request {round}: {}", r.status()),
            Err(e) => api_support::die(&format!("request {round} failed: {e}")),
        }
    }
    let expected = api.report(&authority, "request");
    drop(client);
    driver.shutdown_blocking();
    api_support::exit_unless(expected);
}
