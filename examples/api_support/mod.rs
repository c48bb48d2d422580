//! A small API for the middleware examples: a real HTTP server (hyper) on
//! `127.0.0.1` that accepts a bearer token only if the local authority
//! issued it and has not revoked it, and otherwise answers `401` with
//! `WWW-Authenticate: Bearer error="invalid_token"`, as a resource server
//! does. It counts what it answered.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use freshtoken::testing::LocalAuthority;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// The running API.
pub struct Api {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub rejected: Arc<AtomicUsize>,
}

impl Api {
    /// Starts the API on the current tokio runtime.
    #[allow(dead_code)]
    pub async fn start(authority: Arc<LocalAuthority>) -> Api {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("an address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let rejected = Arc::new(AtomicUsize::new(0));
        let (ok, no) = (accepted.clone(), rejected.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (authority, ok, no) = (authority.clone(), ok.clone(), no.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (authority, ok, no) = (authority.clone(), ok.clone(), no.clone());
                            async move {
                                let valid = req
                                    .headers()
                                    .get("authorization")
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(|v| v.strip_prefix("Bearer "))
                                    .is_some_and(|t| authority.validate_access_token(t).is_ok());
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let mut response = Response::new(Full::new(body));
                                if valid {
                                    ok.fetch_add(1, Ordering::SeqCst);
                                } else {
                                    no.fetch_add(1, Ordering::SeqCst);
                                    *response.status_mut() = hyper::StatusCode::UNAUTHORIZED;
                                    response.headers_mut().insert(
                                        "www-authenticate",
                                        http::HeaderValue::from_static(
                                            "Bearer realm=\"api\", error=\"invalid_token\"",
                                        ),
                                    );
                                }
                                Ok::<_, Infallible>(response)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Api {
            addr,
            accepted,
            rejected,
        }
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
}

/// The same API over gRPC (HTTP/2): `/example.Orders/Place` echoes the
/// message to a valid token and answers UNAUTHENTICATED (trailers-only,
/// grpc-status 16) otherwise.
#[allow(dead_code)]
pub async fn start_grpc(authority: Arc<LocalAuthority>) -> Api {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("an address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let rejected = Arc::new(AtomicUsize::new(0));
    let (ok, no) = (accepted.clone(), rejected.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (authority, ok, no) = (authority.clone(), ok.clone(), no.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (authority, ok, no) = (authority.clone(), ok.clone(), no.clone());
                        async move {
                            let valid = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.strip_prefix("Bearer "))
                                .is_some_and(|t| authority.validate_access_token(t).is_ok());
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let response = if valid {
                                ok.fetch_add(1, Ordering::SeqCst);
                                let mut trailers = http::HeaderMap::new();
                                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                                let frames = vec![
                                    Ok::<_, Infallible>(hyper::body::Frame::data(body)),
                                    Ok(hyper::body::Frame::trailers(trailers)),
                                ];
                                Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(http_body_util::Either::Left(
                                        http_body_util::StreamBody::new(futures::stream::iter(
                                            frames,
                                        )),
                                    ))
                            } else {
                                no.fetch_add(1, Ordering::SeqCst);
                                Response::builder()
                                    .header("content-type", "application/grpc")
                                    .header("grpc-status", "16")
                                    .header("grpc-message", "invalid token")
                                    .body(http_body_util::Either::Right(Full::new(Bytes::new())))
                            };
                            Ok::<_, Infallible>(response.expect("a response"))
                        }
                    });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    Api {
        addr,
        accepted,
        rejected,
    }
}

/// A local authority with one client and 60 s tokens.
pub fn authority() -> Arc<LocalAuthority> {
    match LocalAuthority::builder()
        .client("example-service", "example-secret-never-printed")
        .start()
    {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("error: the local authority could not start: {e}");
            std::process::exit(1);
        }
    }
}

#[allow(dead_code)]
pub fn payload() -> Bytes {
    Bytes::from_static(b"{\"order\":42}")
}
