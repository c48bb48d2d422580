//! Calling an API with reqwest and freshtoken's reqwest-middleware
//! middleware: every request carries the current token; when the API
//! revokes it mid-run, the middleware invalidates it, waits for the new one
//! and replays the request once (`Request::try_clone`: any body but a
//! stream), so the application only ever sees `200`.
//!
//! ```text
//! cargo run -p freshtoken-examples --example middleware_reqwest
//! ```

#[path = "api_support/mod.rs"]
mod api_support;

use freshtoken::driver::Builder;
use freshtoken::middleware::reqwest::AuthMiddleware;
use freshtoken::runtime::Tokio;

#[tokio::main]
async fn main() {
    let authority = api_support::authority();
    let api = api_support::Api::start(authority.clone()).await;
    let source = match authority.client_credentials("example-service").build() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let (tokens, driver) = Builder::new().spawn(Tokio::current().expect("a tokio runtime"), source);
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(tokens.clone()))
        .build();

    for round in 1..=4 {
        if round == 3 {
            let n = authority.revoke_access_tokens();
            println!("the API revoked {n} token(s)");
        }
        match client
            .post(api.url("/orders"))
            .body(api_support::payload())
            .send()
            .await
        {
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
    driver.shutdown().await;
    if (accepted, rejected) != (4, 1) {
        eprintln!("error: expected 4 accepted and 1 rejected (replayed once)");
        std::process::exit(1);
    }
}
