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
    let (authority, api, source) = api_support::setup(false).await;
    let (tokens, driver) = Builder::new().spawn(Tokio::current().expect("a tokio runtime"), source);
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(tokens.clone()))
        .build();

    for round in 1..=api_support::ROUNDS {
        api_support::before_round(round, &authority);
        match client
            .post(api.url("/orders"))
            .body(api_support::payload())
            .send()
            .await
        {
            Ok(r) => println!("request {round}: {}", r.status()),
            Err(e) => api_support::die(&format!("request {round} failed: {e}")),
        }
    }
    let expected = api.report(&authority, "request");
    driver.shutdown().await;
    api_support::exit_unless(expected);
}
