//! The tower layer's overhead per request with a valid token (header set,
//! no refresh), around a no-op inner service, so that no network round
//! trip hides it. Side by side in one group:
//!
//! * `inner_alone`: building the request and calling the no-op service;
//! * `layer_oneshot_body`: the same through [`AuthLayer`] with a body that
//!   cannot be replayed (nothing is kept for a replay);
//! * `layer_replayable_body`: the same with a `Full<Bytes>` body, which the
//!   layer copies (request head, body, service) in case of a 401;
//! * `layer_managed_oneshot`: a one-shot body with the token from a
//!   `TokenManager` key (a counted read).
//!
//! The token is a 1 KB JWT-sized string; the added cost is the difference
//! to `inner_alone`. Futures are polled once with a no-op waker: the inner
//! service answers at once.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use freshtoken::driver::Builder;
use freshtoken::manager::{TokenKey, TokenManager};
use freshtoken::middleware::tower::{AuthLayer, ReplayBody};
use freshtoken::source::ConstTokenSource;
use http_body_util::Full;
use tower_layer::Layer;
use tower_service::Service;

/// A body the layer must not copy.
struct OneShot(#[allow(dead_code)] Bytes);

impl ReplayBody for OneShot {
    fn try_clone(&self) -> Option<Self> {
        None
    }
}

/// Answers every request at once with an empty 200.
#[derive(Clone)]
struct Noop;

impl<B> Service<http::Request<B>> for Noop {
    type Response = http::Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<http::Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        black_box(&request);
        ready(Ok(http::Response::new(())))
    }
}

fn once<S, B>(service: &mut S, body: B) -> u16
where
    S: Service<http::Request<B>, Response = http::Response<()>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let _ = service.poll_ready(&mut cx);
    let mut request = http::Request::new(body);
    request.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    let fut = pin!(service.call(request));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(r)) => r.status().as_u16(),
        Poll::Ready(Err(e)) => panic!("{e:?}"),
        Poll::Pending => panic!("the no-op service is never pending"),
    }
}

fn bench(c: &mut Criterion) {
    let token = format!("eyJ{}", "x".repeat(1021));
    let (tokens, driver) = Builder::new()
        .spawn_thread(ConstTokenSource::new(token.clone(), Some(3600)))
        .unwrap();
    tokens.wait_ready(Duration::from_secs(10)).unwrap();
    let manager = TokenManager::builder().build(move |_key: &TokenKey, builder| {
        Ok(builder.spawn_thread(ConstTokenSource::new(token.clone(), Some(3600)))?)
    });
    let managed = manager.handle(TokenKey::new("bench"));
    managed.wait_ready(Duration::from_secs(10)).unwrap();
    let body = Bytes::from_static(b"{\"n\":1}");

    let mut parts = c.benchmark_group("tower_layer_parts");
    parts.bench_function("handle_token", |b| {
        b.iter(|| tokens.token().map(|t| t.id()))
    });
    parts.bench_function("handle_valid_token", |b| {
        b.iter(|| tokens.valid_token().map(|t| t.id()).ok())
    });
    parts.bench_function("system_time_now", |b| b.iter(std::time::SystemTime::now));
    let auth = freshtoken::middleware::Authorizer::new(tokens.clone());
    parts.bench_function("authorizer_current", |b| b.iter(|| auth.current().is_ok()));
    parts.finish();

    let mut group = c.benchmark_group("tower_layer");
    let mut inner = Noop;
    group.bench_function("inner_alone", |b| {
        b.iter(|| once(&mut inner, Full::new(body.clone())))
    });
    let mut oneshot = AuthLayer::new(tokens.clone()).layer(Noop);
    assert_eq!(once(&mut oneshot, OneShot(body.clone())), 200);
    group.bench_function("layer_oneshot_body", |b| {
        b.iter(|| once(&mut oneshot, OneShot(body.clone())))
    });
    let mut replayable = AuthLayer::new(tokens.clone()).layer(Noop);
    group.bench_function("layer_replayable_body", |b| {
        b.iter(|| once(&mut replayable, Full::new(body.clone())))
    });
    let mut managed_layer = AuthLayer::new(managed.clone()).layer(Noop);
    group.bench_function("layer_managed_oneshot", |b| {
        b.iter(|| once(&mut managed_layer, OneShot(body.clone())))
    });
    group.finish();
    drop((oneshot, replayable, managed_layer, managed, manager, tokens));
    driver.shutdown_blocking();
}

criterion_group!(benches, bench);

/// `MIDDLEWARE_LOOP=<variant>:<n>` runs one variant `n` times and exits,
/// for counting instructions with `perf stat` when a loaded machine makes
/// times unreliable (variants: inner, oneshot, replayable, managed).
fn main() {
    if let Ok(spec) = std::env::var("MIDDLEWARE_LOOP") {
        let (variant, n) = spec.split_once(':').unwrap_or((&spec, "1000000"));
        let n: u64 = n.parse().unwrap_or(1_000_000);
        let (tokens, driver) = Builder::new()
            .spawn_thread(ConstTokenSource::new(
                format!("eyJ{}", "x".repeat(1021)),
                Some(3600),
            ))
            .unwrap();
        tokens.wait_ready(Duration::from_secs(10)).unwrap();
        let body = Bytes::from_static(b"{\"n\":1}");
        let mut sum = 0u64;
        match variant {
            "inner" => {
                let mut s = Noop;
                for _ in 0..n {
                    sum += u64::from(once(&mut s, Full::new(body.clone())));
                }
            }
            "oneshot" => {
                let mut s = AuthLayer::new(tokens.clone()).layer(Noop);
                for _ in 0..n {
                    sum += u64::from(once(&mut s, OneShot(body.clone())));
                }
            }
            "managed" => {
                let manager = TokenManager::builder().build(|_key: &TokenKey, builder| {
                    let token = format!("eyJ{}", "x".repeat(1021));
                    Ok(builder.spawn_thread(ConstTokenSource::new(token, Some(3600)))?)
                });
                let managed = manager.handle(TokenKey::new("bench"));
                managed.wait_ready(Duration::from_secs(10)).unwrap();
                let mut s = AuthLayer::new(managed).layer(Noop);
                for _ in 0..n {
                    sum += u64::from(once(&mut s, OneShot(body.clone())));
                }
                manager.shutdown_blocking();
            }
            _ => {
                let mut s = AuthLayer::new(tokens.clone()).layer(Noop);
                for _ in 0..n {
                    sum += u64::from(once(&mut s, Full::new(body.clone())));
                }
            }
        }
        println!("{variant}: {n} requests, checksum {sum}");
        drop(tokens);
        driver.shutdown_blocking();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
