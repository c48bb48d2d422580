//! Calling an API through hyper-util's client with freshtoken's tower
//! layer: every request carries the current token; when the API revokes
//! it mid-run, the layer invalidates it, waits for the new one and replays
//! the request once, so the application only ever sees `200`.
//!
//! ```text
//! cargo run -p freshtoken-examples --example middleware_tower
//! ```

#[path = "api_support/mod.rs"]
mod api_support;

use bytes::Bytes;
use freshtoken::driver::Builder;
use freshtoken::middleware::tower::AuthLayer;
use freshtoken::runtime::Tokio;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service, ServiceExt};

#[tokio::main]
async fn main() {
    let (authority, api, source) = api_support::setup(false).await;
    let (tokens, driver) = Builder::new().spawn(Tokio::current().expect("a tokio runtime"), source);

    // The client: hyper-util's, wrapped in the layer.
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut client = AuthLayer::new(tokens.clone()).layer(http);

    for round in 1..=api_support::ROUNDS {
        api_support::before_round(round, &authority);
        let request = http::Request::post(api.url("/orders"))
            .body(Full::new(api_support::payload()))
            .expect("a request");
        let response = match client.ready().await {
            Ok(c) => c.call(request).await,
            Err(e) => Err(e),
        };
        match response {
            Ok(r) => println!(
                "request {round}: {} (token {})",
                r.status(),
                tokens
                    .token()
                    .map(|t| t.id().to_string())
                    .unwrap_or_default()
            ),
            Err(e) => api_support::die(&format!("request {round} failed: {e}")),
        }
    }
    let expected = api.report(&authority, "request");
    drop(client);
    driver.shutdown().await;
    api_support::exit_unless(expected);
}
