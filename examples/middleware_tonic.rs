//! Calling a gRPC API with tonic: `AuthInterceptor` attaches the current
//! token as `authorization` metadata, and `call_with_replay` makes a unary
//! call once more with a new token when the first came back
//! UNAUTHENTICATED. The API revokes the token mid-run; every call still
//! succeeds. (Messages are raw bytes here, so the example needs no
//! protobuf code generation; a generated client takes the same
//! interceptor: `Client::with_interceptor(channel, auth.clone())`.)
//!
//! ```text
//! cargo run -p freshtoken-examples --example middleware_tonic
//! ```

#[path = "api_support/mod.rs"]
mod api_support;

use bytes::{Buf, BufMut, Bytes};
use freshtoken::driver::Builder;
use freshtoken::middleware::tonic::AuthInterceptor;
use freshtoken::runtime::Tokio;
use http::uri::PathAndQuery;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Status;

/// Messages as raw bytes.
#[derive(Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

type Client = tonic::client::Grpc<InterceptedService<Channel, AuthInterceptor>>;

async fn place(client: &Client) -> Result<Bytes, Status> {
    let mut client = client.clone();
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let request = tonic::Request::new(api_support::payload());
    let path = PathAndQuery::from_static("/example.Orders/Place");
    Ok(client.unary(request, path, Raw).await?.into_inner())
}

#[tokio::main]
async fn main() {
    let (authority, api, source) = api_support::setup(true).await;
    let (tokens, driver) = Builder::new().spawn(Tokio::current().expect("a tokio runtime"), source);
    // The interceptor does not wait (it is synchronous): wait for the
    // first token at start-up.
    if let Err(e) = tokens.ready().await {
        api_support::die(&format!("no token: {e}"));
    }
    let channel = match Channel::from_shared(api.url("")) {
        Ok(endpoint) => match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => api_support::die(&format!("cannot connect to the API: {e}")),
        },
        Err(e) => api_support::die(&e.to_string()),
    };
    let auth = AuthInterceptor::new(tokens.clone());
    let client = tonic::client::Grpc::new(InterceptedService::new(channel, auth.clone()));

    for round in 1..=api_support::ROUNDS {
        api_support::before_round(round, &authority);
        match auth.call_with_replay(|| place(&client)).await {
            Ok(reply) => println!("call {round}: OK ({} bytes)", reply.len()),
            Err(e) => api_support::die(&format!("call {round} failed: {}", e.message())),
        }
    }
    let expected = api.report(&authority, "call");
    driver.shutdown().await;
    api_support::exit_unless(expected);
}
