//! The middleware presenting DPoP-bound tokens (RFC 9449 7) to a real
//! resource server (hyper on loopback) that validates every proof fully
//! (the ES256 signature with the embedded key, `typ`, `alg`, `htm`, `htu`,
//! the `iat` window, `jti` replay, `ath`, the token's `cnf.jkt`) and
//! demands its own nonce: reqwest, tower and ureq.

#[path = "middleware_support/dpop_server.rs"]
mod dpop_server;
mod dpop_support;
mod metrics_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use dpop_server::{bound_driver, challenge, check_request, State};
use freshtoken::driver::DriverHandle;
use freshtoken::metrics::names;
use freshtoken::middleware::Authorizer;
use freshtoken::oauth2::DpopKey;
use freshtoken::TokenHandle;
use freshtoken_tests::log_capture::Capture;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use metrics_support::Recording;

struct ResourceServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ResourceServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ResourceServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, addr, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ResourceServer { addr, state, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn revoke_all(&self) {
        let mut s = self.state();
        let tokens: Vec<String> = s.tokens.iter().cloned().collect();
        s.revoked.extend(tokens);
    }

    /// The server gives a new nonce from now on: the next request's is
    /// stale.
    fn rotate_nonce(&self) {
        self.state().nonce_counter += 1;
    }
}

/// Checks every request (see `dpop_server::check`) and echoes the body
/// when it passes.
async fn answer(
    state: &Mutex<State>,
    addr: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match check_request(state, &format!("http://{addr}"), req).await {
        (Ok(()), body) => Response::new(Full::new(body)),
        (Err(refusal), _) => {
            let mut r = Response::builder()
                .status(401)
                .header("www-authenticate", challenge(refusal.error));
            if let Some(nonce) = refusal.nonce {
                r = r.header("dpop-nonce", nonce);
            }
            r.body(Full::new(Bytes::new())).unwrap()
        }
    }
}

fn logs() -> Arc<Mutex<String>> {
    static LOGS: OnceLock<Arc<Mutex<String>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(String::new()));
        tracing::subscriber::set_global_default(Capture(logs.clone()))
            .expect("the only subscriber");
        logs
    })
    .clone()
}

/// The metrics are the process's: the tests that count them take turns.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

fn dpop_counter(name: &str, server: &str) -> u64 {
    Recording::global().counter_without_refresher(name, &[("server", server)])
}

struct Setup {
    rs: ResourceServer,
    key: DpopKey,
    tokens: TokenHandle,
    driver: DriverHandle,
    fetches: Arc<AtomicUsize>,
}

async fn setup() -> Setup {
    logs();
    Recording::global();
    let rs = ResourceServer::start().await;
    let (key, tokens, driver, fetches) = bound_driver().await;
    Setup {
        rs,
        key,
        tokens,
        driver,
        fetches,
    }
}

/// Nothing secret in the logs or in `Debug`: no proof, no token, no
/// token payload.
fn assert_nothing_secret(rs: &ResourceServer, what: &str, text: &str) {
    dpop_server::assert_nothing_secret(&rs.state(), what, text);
}

mod reqwest_client {
    use super::*;
    use freshtoken::middleware::reqwest::AuthMiddleware;
    use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

    fn client(auth: Authorizer) -> ClientWithMiddleware {
        ClientBuilder::new(reqwest::Client::new())
            .with(AuthMiddleware::with_authorizer(auth))
            .build()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fresh_proof_per_request_and_one_replay_for_the_nonce() {
        let _serial = serial().await;
        let Setup {
            rs,
            key,
            tokens,
            driver,
            fetches,
        } = setup().await;
        let proofs_before = dpop_counter(names::DPOP_PROOFS_TOTAL, "resource");
        let retries_before = dpop_counter(names::DPOP_NONCE_RETRIES_TOTAL, "resource");
        let auth = Authorizer::new(tokens.clone()).dpop(key.clone());
        let client = client(auth.clone());
        for (i, path) in ["/orders?page=1#top", "/orders/2", "/orders?page=3"]
            .iter()
            .enumerate()
        {
            let r = client
                .post(rs.url(path))
                .body(format!("order {i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path}");
            assert_eq!(r.bytes().await.unwrap(), format!("order {i}"));
        }
        // A GET too: htm follows the method.
        let r = client.get(rs.url("/orders")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        {
            let s = rs.state();
            assert_eq!(s.refused, Vec::<String>::new());
            // The first request learnt the nonce, then one request each.
            assert_eq!(s.statuses, [401, 200, 200, 200, 200]);
            assert_eq!(s.challenges, 1);
            assert_eq!(s.jtis.len(), 5, "a fresh proof per request");
        }
        // The nonce challenge invalidated nothing.
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(
            dpop_counter(names::DPOP_PROOFS_TOTAL, "resource") - proofs_before,
            5
        );
        assert_eq!(
            dpop_counter(names::DPOP_NONCE_RETRIES_TOTAL, "resource") - retries_before,
            1
        );

        // A new nonce from the server: one more replay, still no fetch.
        rs.rotate_nonce();
        let r = client
            .post(rs.url("/orders"))
            .body("again")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(rs.state().statuses[5..], [401, 200]);
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        let text = logs().lock().unwrap().clone();
        assert_nothing_secret(&rs, "the logs", &text);
        let debug = format!("{auth:?} {:?} {client:?}", auth.current().unwrap());
        assert_nothing_secret(&rs, "Debug", &debug);
        assert!(
            debug.contains(key.thumbprint()),
            "the key shows as its thumbprint"
        );
        drop((client, auth, tokens));
        driver.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_invalid_token_is_replaced_and_replayed_with_a_new_proof() {
        let _serial = serial().await;
        let Setup {
            rs,
            key,
            tokens,
            driver,
            fetches,
        } = setup().await;
        let client = client(Authorizer::new(tokens.clone()).dpop(key));
        let r = client.post(rs.url("/a")).body("one").send().await.unwrap();
        assert_eq!(r.status(), 200);
        rs.revoke_all();
        let r = client.post(rs.url("/a")).body("two").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), "two");
        {
            let s = rs.state();
            assert_eq!(s.statuses, [401, 200, 401, 200]);
            assert_eq!(s.refused.last().map(String::as_str), Some("revoked"));
            assert_eq!(s.tokens.len(), 2);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        drop((client, tokens));
        driver.shutdown().await;
    }

    /// A stream cannot be sent again: its nonce challenge goes back to the
    /// caller, the token stays, and the next request carries the nonce.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_gets_the_nonce_challenge_back_and_the_token_stays() {
        let _serial = serial().await;
        let Setup {
            rs,
            key,
            tokens,
            driver,
            fetches,
        } = setup().await;
        let client = client(Authorizer::new(tokens.clone()).dpop(key));
        let logged = logs().lock().unwrap().len();
        let stream = futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from("s")) });
        let r = client
            .post(rs.url("/a"))
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = client.post(rs.url("/a")).body("next").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(rs.state().statuses, [401, 200]);
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "the token was kept");
        let text = logs().lock().unwrap()[logged..].to_owned();
        assert!(!text.contains("invalidating"), "the token was invalidated");
        drop((client, tokens));
        driver.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_the_key_the_token_is_refused() {
        let _serial = serial().await;
        let Setup {
            rs, tokens, driver, ..
        } = setup().await;
        // Another key than the token's: the server refuses every proof.
        let other = DpopKey::generate().unwrap();
        let other_key = client(
            Authorizer::new(tokens.clone())
                .dpop(other)
                .refresh_wait(Duration::ZERO),
        );
        let r = other_key.get(rs.url("/a")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(rs
            .state()
            .refused
            .iter()
            .all(|why| why == "the proof's key is not the token's"));
        // No key at all: no proof.
        let keyless = client(Authorizer::new(tokens.clone()).refresh_wait(Duration::ZERO));
        let r = keyless.get(rs.url("/a")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(
            rs.state().refused.last().map(String::as_str),
            Some("0 DPoP headers")
        );
        drop((client, tokens));
        driver.shutdown().await;
    }
}

/// RFC 9449 9: a nonce is the server's. One authorizer alternating
/// between two resource servers (two origins), each with its own nonce,
/// learns each nonce once: one replay per server, not one per switch.
mod two_origins {
    use super::*;
    use freshtoken::middleware::reqwest::AuthMiddleware;
    use reqwest_middleware::ClientBuilder;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_origin_gets_its_own_nonce() {
        let _serial = serial().await;
        let Setup {
            rs: a,
            key,
            tokens,
            driver,
            fetches,
        } = setup().await;
        let b = ResourceServer::start().await;
        b.rotate_nonce();
        assert_ne!(a.state().nonce(), b.state().nonce());
        let retries_before = dpop_counter(names::DPOP_NONCE_RETRIES_TOTAL, "resource");
        let auth = Authorizer::new(tokens.clone()).dpop(key);
        let client = ClientBuilder::new(reqwest::Client::new())
            .with(AuthMiddleware::with_authorizer(auth.clone()))
            .build();
        for round in 0..4 {
            for rs in [&a, &b] {
                let r = client
                    .post(rs.url("/orders"))
                    .body(format!("round {round}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        }
        let replays = dpop_counter(names::DPOP_NONCE_RETRIES_TOTAL, "resource") - retries_before;
        println!("two origins, 8 alternating requests: {replays} nonce replay(s)");
        for rs in [&a, &b] {
            let s = rs.state();
            assert_eq!(s.refused, Vec::<String>::new());
            assert_eq!(s.challenges, 1, "one nonce challenge per server");
            assert_eq!(s.statuses, [401, 200, 200, 200, 200]);
        }
        assert_eq!(replays, 2, "one replay per server");
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        let debug = format!("{auth:?}");
        assert!(!debug.contains(&a.state().nonce()) && !debug.contains(&b.state().nonce()));
        assert_nothing_secret(&a, "Debug", &debug);
        assert_nothing_secret(&b, "the logs", &logs().lock().unwrap().clone());
        drop((client, auth, tokens));
        driver.shutdown().await;
    }
}

mod tower_client {
    use super::*;
    use freshtoken::middleware::tower::AuthLayer;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower::{Layer, ServiceExt};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fresh_proof_per_request_and_one_replay_for_the_nonce() {
        let _serial = serial().await;
        let Setup {
            rs,
            key,
            tokens,
            driver,
            fetches,
        } = setup().await;
        let client = AuthLayer::with_authorizer(Authorizer::new(tokens.clone()).dpop(key))
            .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
        for (i, path) in ["/orders?page=1", "/orders/2", "/orders"]
            .iter()
            .enumerate()
        {
            let request = Request::post(rs.url(path))
                .body(Full::new(Bytes::from(format!("order {i}"))))
                .unwrap();
            let r = client.clone().oneshot(request).await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            let body = r.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, format!("order {i}"));
        }
        {
            let s = rs.state();
            assert_eq!(s.refused, Vec::<String>::new());
            assert_eq!(s.statuses, [401, 200, 200, 200]);
            assert_eq!(s.jtis.len(), 4, "a fresh proof per request");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        // A revoked token: refreshed, and the replay carries a new proof.
        rs.revoke_all();
        let request = Request::post(rs.url("/orders"))
            .body(Full::new(Bytes::from("late")))
            .unwrap();
        let r = client.clone().oneshot(request).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(rs.state().statuses[4..], [401, 200]);
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        assert_nothing_secret(&rs, "the logs", &logs().lock().unwrap().clone());
        drop((client, tokens));
        driver.shutdown().await;
    }
}

mod ureq_client {
    use super::*;
    use freshtoken::middleware::ureq::AuthAgent;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fresh_proof_per_request_and_one_replay_for_the_nonce() {
        let _serial = serial().await;
        let Setup {
            rs,
            key,
            tokens,
            driver,
            fetches,
        } = setup().await;
        let retries_before = dpop_counter(names::DPOP_NONCE_RETRIES_TOTAL, "resource");
        // The challenge and the nonce are read only from an answer that
        // ureq does not turn into an error.
        let config = ureq::Agent::config_builder().http_status_as_error(false);
        let api = AuthAgent::with_authorizer(Authorizer::new(tokens.clone()).dpop(key), config);
        let urls: Vec<String> = ["/orders?page=1", "/orders/2", "/orders"]
            .iter()
            .map(|p| rs.url(p))
            .collect();
        let (api, bodies) = tokio::task::spawn_blocking(move || {
            let bodies: Vec<(u16, String)> = urls
                .iter()
                .enumerate()
                .map(|(i, url)| {
                    let mut r = api
                        .run(|agent| agent.post(url).send(format!("order {i}")))
                        .unwrap();
                    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
                })
                .collect();
            (api, bodies)
        })
        .await
        .unwrap();
        assert_eq!(
            bodies,
            (0..3)
                .map(|i| (200, format!("order {i}")))
                .collect::<Vec<_>>()
        );
        {
            let s = rs.state();
            assert_eq!(s.refused, Vec::<String>::new());
            assert_eq!(s.statuses, [401, 200, 200, 200]);
            assert_eq!(s.jtis.len(), 4, "a fresh proof per request");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(
            dpop_counter(names::DPOP_NONCE_RETRIES_TOTAL, "resource") - retries_before,
            1
        );
        assert_nothing_secret(&rs, "the logs", &logs().lock().unwrap().clone());
        drop((api, tokens));
        driver.shutdown().await;
    }
}
