//! What the middleware examples share: a small API, a real HTTP server
//! (hyper) on `127.0.0.1` that accepts a bearer token only if the local
//! authority issued it and has not revoked it, and otherwise answers `401`
//! with `WWW-Authenticate: Bearer error="invalid_token"` (or gRPC
//! UNAUTHENTICATED), as a resource server does; the authority and source;
//! the command line and log set-up; and the check each example ends with
//! (four requests, the API revoking the token before the third: 4 accepted,
//! 1 rejected and replayed).

// Each example uses part of this module.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use freshtoken::oauth2::ClientCredentials;
use freshtoken::testing::LocalAuthority;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[path = "../support/mod.rs"]
mod support;
pub use support::cli;

/// The requests each example makes; the API revokes the token before
/// [`REVOKE_BEFORE`].
pub const ROUNDS: u32 = 4;
pub const REVOKE_BEFORE: u32 = 3;

/// The middleware examples take no flags but `--help`.
#[derive(clap::Parser)]
#[command(
    about = "Calls a local API through freshtoken's middleware; the API revokes the token \
             mid-run and the middleware replays the request once with a new one",
    long_about = None
)]
pub struct NoFlags {}

/// The running API.
pub struct Api {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub rejected: Arc<AtomicUsize>,
}

type Body = BoxBody<Bytes, Infallible>;

impl Api {
    /// Starts the HTTP/1 API on the current tokio runtime: it echoes the
    /// body to a valid token.
    pub async fn start(authority: Arc<LocalAuthority>) -> Api {
        Api::serve(authority, false).await
    }

    /// The same API over gRPC (HTTP/2): `/example.Orders/Place` echoes the
    /// message to a valid token and answers UNAUTHENTICATED (trailers-only,
    /// grpc-status 16) otherwise.
    pub async fn start_grpc(authority: Arc<LocalAuthority>) -> Api {
        Api::serve(authority, true).await
    }

    async fn serve(authority: Arc<LocalAuthority>, grpc: bool) -> Api {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| die(&format!("no loopback port for the API: {e}")));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| die(&format!("the API's address: {e}")));
        let api = Api {
            addr,
            accepted: Arc::new(AtomicUsize::new(0)),
            rejected: Arc::new(AtomicUsize::new(0)),
        };
        let (ok, no) = (api.accepted.clone(), api.rejected.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (authority, ok, no) = (authority.clone(), ok.clone(), no.clone());
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (authority, ok, no) = (authority.clone(), ok.clone(), no.clone());
                        async move {
                            let valid = bearer_is_valid(&req, &authority);
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let counter = if valid { &ok } else { &no };
                            counter.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(match (grpc, valid) {
                                (false, true) => Response::new(Full::new(body).boxed()),
                                (false, false) => unauthorized(),
                                (true, true) => grpc_ok(body),
                                (true, false) => grpc_unauthenticated(),
                            })
                        }
                    });
                tokio::spawn(async move {
                    let io = TokioIo::new(stream);
                    let _ = if grpc {
                        hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(io, service)
                        .await
                    } else {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await
                    };
                });
            }
        });
        api
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn counts(&self) -> (usize, usize) {
        (
            self.accepted.load(Ordering::SeqCst),
            self.rejected.load(Ordering::SeqCst),
        )
    }

    /// Prints what the API and the authority saw; whether it is the
    /// expected 4 accepted and 1 rejected (replayed once).
    pub fn report(&self, authority: &LocalAuthority, what: &str) -> bool {
        let (accepted, rejected) = self.counts();
        println!(
            "the API accepted {accepted} and rejected {rejected} {what}(s); the authority issued {} token(s)",
            authority.issued_count()
        );
        (accepted, rejected) == (ROUNDS as usize, 1)
    }
}

/// What every async middleware example starts with: the command line and
/// log, the authority, the API (HTTP/1, or gRPC when `grpc`) and the source.
pub async fn setup(grpc: bool) -> (Arc<LocalAuthority>, Api, ClientCredentials) {
    let NoFlags {} = cli();
    let authority = authority();
    let api = Api::serve(authority.clone(), grpc).await;
    let source = source(&authority);
    (authority, api, source)
}

/// Exits with 1 unless [`Api::report`] said all went as expected.
pub fn exit_unless(expected: bool) {
    if !expected {
        die("expected 4 accepted and 1 rejected (replayed once)");
    }
}

fn bearer_is_valid<B>(req: &Request<B>, authority: &LocalAuthority) -> bool {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| authority.validate_access_token(t).is_ok())
}

fn unauthorized() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = hyper::StatusCode::UNAUTHORIZED;
    response.headers_mut().insert(
        "www-authenticate",
        http::HeaderValue::from_static("Bearer realm=\"api\", error=\"invalid_token\""),
    );
    response
}

fn grpc_ok(message: Bytes) -> Response<Body> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = vec![
        Ok::<_, Infallible>(hyper::body::Frame::data(message)),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let mut response =
        Response::new(http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed());
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

fn grpc_unauthenticated() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", http::HeaderValue::from_static("16"));
    headers.insert(
        "grpc-message",
        http::HeaderValue::from_static("invalid token"),
    );
    response
}

/// A local authority with one client and 60 s tokens.
pub fn authority() -> Arc<LocalAuthority> {
    match LocalAuthority::builder()
        .client("example-service", "example-secret-never-printed")
        .start()
    {
        Ok(a) => Arc::new(a),
        Err(e) => die(&format!("the local authority could not start: {e}")),
    }
}

/// The client-credentials source for the authority's client.
pub fn source(authority: &LocalAuthority) -> ClientCredentials {
    authority
        .client_credentials("example-service")
        .build()
        .unwrap_or_else(|e| die(&e.to_string()))
}

/// Before request `round`: the API revokes the current token at
/// [`REVOKE_BEFORE`].
pub fn before_round(round: u32, authority: &LocalAuthority) {
    if round == REVOKE_BEFORE {
        let n = authority.revoke_access_tokens();
        println!("the API revoked {n} token(s)");
    }
}

/// Prints `error: <message>` and exits with 1.
pub fn die(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}

pub fn payload() -> Bytes {
    Bytes::from_static(b"{\"order\":42}")
}
