//! The read path: how long it takes to get the current token and read the
//! access token, with 1 and 2 reader threads, while a writer publishes a
//! new token every millisecond. Side by side in one group:
//!
//! * `freshtoken_token`: `TokenHandle::token()` (an arc-swap guard);
//! * `freshtoken_reader`: `TokenReader::token()` (an `arc_swap::Cache`, one
//!   atomic load while the token is unchanged);
//! * `tokio_watch`: `watch::Receiver::borrow().clone()` of an `Arc` token,
//!   what aliri_tokens does under the hood;
//! * `aliri_tokens`: aliri_tokens 0.3's `TokenWatcher::token()`.
//!
//! Each sample runs `iters` reads on every reader thread at once and
//! reports the wall time; the throughput is in reads (all threads).

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use freshtoken::driver::Publisher;
use freshtoken::handle::{RefreshState, Snapshot};
use freshtoken::{AccessToken, ManualClock, Timestamp, Token, TokenHandle};

/// A background writer that runs until dropped.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Writer {
    fn every_ms(mut publish: impl FnMut(u64) + Send + 'static) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut n = 0;
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                publish(n);
                thread::sleep(Duration::from_millis(1));
            }
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn token(n: u64) -> Arc<Token> {
    Arc::new(Token::new(
        AccessToken::new(format!("eyJhbGciOiJSUzI1NiJ9.token-number-{n}.signature")),
        Timestamp::from_secs(0),
        Timestamp::from_secs(1 << 40),
        Timestamp::from_secs(1 << 41),
    ))
}

fn snapshot(n: u64) -> Snapshot {
    let mut s = Snapshot::initial();
    s.token = Some(token(n));
    s.state = RefreshState::Healthy;
    s
}

/// Runs `read` `iters` times on each of `threads` threads at once (each
/// thread builds its reader with `make`); returns the wall time.
fn parallel<R>(
    threads: usize,
    iters: u64,
    make: impl Fn() -> R + Sync,
    read: impl Fn(&mut R) + Sync,
) -> Duration {
    let start = Barrier::new(threads + 1);
    let end = Barrier::new(threads + 1);
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut reader = make();
                start.wait();
                for _ in 0..iters {
                    read(&mut reader);
                }
                end.wait();
            });
        }
        start.wait();
        let t0 = Instant::now();
        end.wait();
        t0.elapsed()
    })
}

fn freshtoken_handle() -> (TokenHandle, Writer) {
    let (publisher, handle) = Publisher::new(Arc::new(ManualClock::default()));
    publisher.publish(snapshot(0));
    let writer = Writer::every_ms(move |n| publisher.publish(snapshot(n)));
    (handle, writer)
}

/// An aliri_tokens source whose tokens are stale on arrival and which takes
/// a millisecond to answer: its watcher then publishes every millisecond.
struct EveryMs {
    lifetime: aliri_tokens::TokenLifetimeConfig,
}

impl aliri_tokens::sources::AsyncTokenSource for EveryMs {
    type Error = std::io::Error;

    fn request_token<'a, 'b>(
        &'a mut self,
    ) -> Pin<
        Box<dyn Future<Output = Result<aliri_tokens::TokenWithLifetime, Self::Error>> + Send + 'b>,
    >
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(self.lifetime.create_token(
                aliri_tokens::AccessToken::from("eyJhbGciOiJSUzI1NiJ9.token-number-n.signature"),
                None::<aliri_tokens::IdToken>,
                aliri_clock::DurationSecs(0),
            ))
        })
    }
}

fn read_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("read_path");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");

    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements(threads as u64));

        {
            let (handle, _writer) = freshtoken_handle();
            group.bench_function(BenchmarkId::new("freshtoken_token", threads), |b| {
                b.iter_custom(|iters| {
                    parallel(
                        threads,
                        iters,
                        || handle.clone(),
                        |h| {
                            let t = h.token().expect("token");
                            black_box(t.access_token().expose_secret().len());
                        },
                    )
                })
            });
            group.bench_function(BenchmarkId::new("freshtoken_reader", threads), |b| {
                b.iter_custom(|iters| {
                    parallel(
                        threads,
                        iters,
                        || handle.reader(),
                        |r| {
                            let t = r.token().expect("token");
                            black_box(t.access_token().expose_secret().len());
                        },
                    )
                })
            });
        }

        {
            let (tx, rx) = tokio::sync::watch::channel(token(0));
            let _writer = Writer::every_ms(move |n| {
                let _ = tx.send(token(n));
            });
            group.bench_function(BenchmarkId::new("tokio_watch", threads), |b| {
                b.iter_custom(|iters| {
                    parallel(
                        threads,
                        iters,
                        || rx.clone(),
                        |rx| {
                            let t = rx.borrow().clone();
                            black_box(t.access_token().expose_secret().len());
                        },
                    )
                })
            });
        }

        {
            let source = EveryMs {
                lifetime: aliri_tokens::TokenLifetimeConfig::new(0.0, aliri_clock::DurationSecs(0)),
            };
            let watcher = runtime
                .block_on(aliri_tokens::TokenWatcher::spawn_from_token_source(
                    source,
                    aliri_tokens::jitter::NullJitter,
                    aliri_tokens::backoff::ErrorBackoffConfig::default(),
                ))
                .expect("aliri watcher");
            group.bench_function(BenchmarkId::new("aliri_tokens", threads), |b| {
                b.iter_custom(|iters| {
                    parallel(
                        threads,
                        iters,
                        || watcher.clone(),
                        |w| {
                            let t = w.token();
                            black_box(t.access_token().as_str().len());
                        },
                    )
                })
            });
            // Dropping the last watcher stops aliri's refresh task.
        }
    }
    group.finish();
}

criterion_group!(benches, read_path);
criterion_main!(benches);
