//! `PostgresCache` against a real PostgreSQL server (a fresh cluster per
//! test, on a free loopback port; `.ci/setup-postgres.sh` installs it).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use freshtoken::cache::LeaseOutcome;
use freshtoken::cache::{AsyncTokenCache, PostgresCache, TokenCache};
use freshtoken::runtime::Tokio;
use freshtoken::Clock;
use freshtoken::{AccessToken, CacheErrorKind, RefreshToken, SystemClock, Timestamp, Token};
use freshtoken_tests::postgres_server::PostgresServer;

fn token(access: &str, refresh: Option<&str>, lifetime: Duration) -> Token {
    let now = SystemClock.now();
    Token::new(
        AccessToken::new(access),
        now,
        now + lifetime / 2,
        now + lifetime,
    )
    .with_refresh_token(refresh.map(RefreshToken::new))
    .with_scope(Some("read".into()))
}

fn cache(server: &PostgresServer, key: &str) -> PostgresCache {
    PostgresCache::new(&server.conn_str(), key).unwrap()
}

#[test]
fn round_trip_through_the_table() {
    let server = PostgresServer::start();
    let a = cache(&server, "app:token");
    assert_eq!(a.load().unwrap(), None);
    let t = token("at-1", Some("rt-1"), Duration::from_secs(60));
    a.store(&t).unwrap();
    assert_eq!(a.load().unwrap(), Some(t.clone()));
    // Another instance (its own connections) sees the same row.
    let b = cache(&server, "app:token");
    let back = b.load().unwrap().unwrap();
    assert_eq!(back, t);
    assert_eq!(back.refresh_token().unwrap().expose_secret(), "rt-1");
    // One row per key, with its metadata columns.
    assert_eq!(
        server.psql("SELECT cache_key, record_format, has_refresh FROM freshtoken_cache"),
        "app:token|json-v1|t"
    );
    // Another key is another row.
    let other = cache(&server, "other:token");
    assert_eq!(other.load().unwrap(), None);
    other
        .store(&token("at-2", None, Duration::from_secs(60)))
        .unwrap();
    assert_eq!(server.psql("SELECT count(*) FROM freshtoken_cache"), "2");
    assert_eq!(a.load().unwrap(), Some(t.clone()));

    // The table dropped under a running cache: one call fails, the next
    // makes it again.
    server.psql("DROP TABLE freshtoken_cache");
    let e = a.load().unwrap_err();
    assert_eq!(e.kind(), CacheErrorKind::Io, "{e}");
    assert_eq!(a.load().unwrap(), None);
    a.store(&t).unwrap();
    assert_eq!(a.load().unwrap(), Some(t));

    // A table of one's own, schema-qualified, created on first use.
    server.psql("CREATE SCHEMA app");
    let own = cache(&server, "k").table("app.Tokens").unwrap();
    own.store(&token("at-3", None, Duration::from_secs(60)))
        .unwrap();
    assert_eq!(server.psql("SELECT count(*) FROM app.\"Tokens\""), "1");
    // Without create_table, a missing table is a plain error, not a panic.
    let missing = cache(&server, "k")
        .table("nowhere")
        .unwrap()
        .create_table(false);
    let e = missing.load().unwrap_err();
    assert_eq!(e.kind(), CacheErrorKind::Io, "{e}");
    assert!(e.to_string().contains("42P01"), "{e}");
}

#[test]
fn eight_threads_create_the_table_at_once() {
    let server = PostgresServer::start();
    let conn = server.conn_str();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (conn, barrier) = (conn.clone(), barrier.clone());
            std::thread::spawn(move || {
                // Generous timeouts: this is about the race, not speed, and
                // the machine may be busy with the other tests' servers.
                let cache = PostgresCache::new(&conn, format!("k{i}"))
                    .unwrap()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_command_timeout(Duration::from_secs(5));
                barrier.wait();
                cache.store(&token(&format!("at-{i}"), None, Duration::from_secs(60)))
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    assert_eq!(server.psql("SELECT count(*) FROM freshtoken_cache"), "8");
}

#[test]
fn the_lease_is_exclusive_extendable_and_lapses() {
    let server = PostgresServer::start();
    let a = cache(&server, "lease");
    let b = cache(&server, "lease");
    let ttl = Duration::from_secs(30);
    assert_eq!(a.acquire_lease(ttl).unwrap(), LeaseOutcome::Granted);
    assert_eq!(b.acquire_lease(ttl).unwrap(), LeaseOutcome::Busy);
    // The holder may extend its own lease.
    assert_eq!(a.acquire_lease(ttl).unwrap(), LeaseOutcome::Granted);
    // Only the holder can release it.
    b.release_lease().unwrap();
    assert_eq!(b.acquire_lease(ttl).unwrap(), LeaseOutcome::Busy);
    a.release_lease().unwrap();
    assert_eq!(b.acquire_lease(ttl).unwrap(), LeaseOutcome::Granted);
    assert_eq!(a.acquire_lease(ttl).unwrap(), LeaseOutcome::Busy);
    // A lease and a token share the row; the lease leaves the token alone.
    let t = token("at", None, Duration::from_secs(60));
    a.store(&t).unwrap();
    assert_eq!(b.load().unwrap(), Some(t));
    b.release_lease().unwrap();

    // A dead holder's lease lapses by its TTL, on the server's clock: the
    // deadline is now() + ttl there, and once the server's clock passes it
    // (moved there by hand, rather than sleeping), another instance gets in.
    assert_eq!(
        a.acquire_lease(Duration::from_secs(30)).unwrap(),
        LeaseOutcome::Granted
    );
    let left: f64 = server
        .psql("SELECT extract(epoch FROM lease_until - now()) FROM freshtoken_cache WHERE cache_key = 'lease'")
        .parse()
        .unwrap();
    assert!(
        (25.0..=30.0).contains(&left),
        "lease deadline {left} s away"
    );
    assert_eq!(b.acquire_lease(ttl).unwrap(), LeaseOutcome::Busy);
    server.psql("UPDATE freshtoken_cache SET lease_until = now() - interval '1 millisecond'");
    assert_eq!(b.acquire_lease(ttl).unwrap(), LeaseOutcome::Granted);
    assert_eq!(a.acquire_lease(ttl).unwrap(), LeaseOutcome::Busy);
}

#[test]
fn eight_processes_never_hold_the_lease_at_once() {
    let server = PostgresServer::start();
    // Create the table first, so the workers race on the lease only.
    cache(&server, "fleet:lease").load().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..8)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_cache_worker"))
                .args(["pg-lease", &server.conn_str(), "fleet:lease"])
                .arg(dir.path())
                .arg("2000")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap()
        })
        .collect();
    let (mut grants, mut busy, mut overlaps, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let mut granted_workers = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} in {line:?}"))
                .parse()
                .unwrap()
        };
        grants += field("grants");
        busy += field("busy");
        overlaps += field("overlaps");
        errors += field("errors");
        granted_workers += usize::from(field("grants") > 0);
    }
    println!(
        "pg lease: 8 processes, 2 s: {grants} grants ({granted_workers} workers), {busy} busy, {overlaps} overlaps, {errors} errors"
    );
    assert_eq!(overlaps, 0, "two holders at once");
    assert_eq!(errors, 0);
    assert!(grants >= 8, "the lease changed hands only {grants} times");
    assert!(busy > 0, "the workers never contended");
    assert!(granted_workers >= 2, "one worker took every grant");
}

#[test]
fn server_down_is_unavailable_then_recovers() {
    let mut server = PostgresServer::start();
    let a = cache(&server, "k").with_connect_timeout(Duration::from_millis(500));
    let t = token("at-before", Some("rt-before"), Duration::from_secs(600));
    a.store(&t).unwrap();
    assert_eq!(
        a.acquire_lease(Duration::from_secs(30)).unwrap(),
        LeaseOutcome::Granted
    );

    server.stop();
    // Every call fails as Unavailable (the machine treats it as a miss);
    // the pooled connection is dead, and so is every new one.
    for _ in 0..2 {
        assert_eq!(a.load().unwrap_err().kind(), CacheErrorKind::Unavailable);
        assert_eq!(a.store(&t).unwrap_err().kind(), CacheErrorKind::Unavailable);
        let e = a.acquire_lease(Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.kind(), CacheErrorKind::Unavailable, "{e}");
        assert_eq!(
            a.release_lease().unwrap_err().kind(),
            CacheErrorKind::Unavailable
        );
    }

    server.restart();
    // The next call reconnects; the row survived the restart.
    assert_eq!(a.load().unwrap(), Some(t));
    // Our lease survived too (it is a row with a deadline, not a session).
    assert_eq!(
        a.acquire_lease(Duration::from_secs(30)).unwrap(),
        LeaseOutcome::Granted
    );
    let t2 = token("at-after", Some("rt-after"), Duration::from_secs(600));
    a.store(&t2).unwrap();
    assert_eq!(cache(&server, "k").load().unwrap(), Some(t2));

    // A restart while the pool holds idle connections: the first call on
    // the stale connection is retried once on a fresh one, unseen.
    server.restart();
    assert!(a.load().unwrap().is_some());
}

#[test]
fn a_locked_row_fails_fast_instead_of_hanging() {
    let server = PostgresServer::start();
    let a = cache(&server, "locked").with_command_timeout(Duration::from_millis(400));
    let t = token("at", None, Duration::from_secs(600));
    a.store(&t).unwrap();

    // Another session locks the row and keeps its transaction open.
    let mut locker = server
        .psql_command()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = locker.stdin.take().unwrap();
    stdin
        .write_all(
            b"BEGIN;\nSELECT * FROM freshtoken_cache WHERE cache_key = 'locked' FOR UPDATE;\n",
        )
        .unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.psql(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE a.state = 'idle in transaction' AND l.locktype = 'transactionid'",
    ) != "1"
    {
        assert!(
            Instant::now() < deadline,
            "the locking session never got its lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Writes need the row lock: lock_timeout ends them with an error.
    let e = a
        .store(&token("at-2", None, Duration::from_secs(900)))
        .unwrap_err();
    assert_eq!(e.kind(), CacheErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("55P03"), "lock_not_available: {e}");
    let e = a.acquire_lease(Duration::from_secs(5)).unwrap_err();
    assert_eq!(e.kind(), CacheErrorKind::Unavailable, "{e}");
    // Reads do not wait for row locks.
    assert_eq!(a.load().unwrap(), Some(t));

    // The lock goes away with the session; writes work again.
    drop(stdin);
    locker.wait().unwrap();
    let t3 = token("at-3", None, Duration::from_secs(900));
    a.store(&t3).unwrap();
    assert_eq!(a.load().unwrap(), Some(t3));
    assert_eq!(
        a.acquire_lease(Duration::from_secs(5)).unwrap(),
        LeaseOutcome::Granted
    );
}

#[test]
fn a_server_that_never_answers_is_a_deadline_not_a_hang() {
    // Accepts connections and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
            if held.len() > 16 {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let cache = PostgresCache::new(&format!("host=127.0.0.1 port={port} user=u"), "k")
        .unwrap()
        .with_connect_timeout(Duration::from_millis(200))
        .with_command_timeout(Duration::from_millis(200));
    let e = cache.load().unwrap_err();
    assert_eq!(e.kind(), CacheErrorKind::Unavailable, "{e}");
    let e = cache.acquire_lease(Duration::from_secs(1)).unwrap_err();
    assert_eq!(e.kind(), CacheErrorKind::Unavailable, "{e}");
}

#[test]
fn stores_never_go_backwards_but_rotated_refresh_tokens_always_land() {
    let server = PostgresServer::start();
    let a = cache(&server, "order");
    let newer = token("at-newer", None, Duration::from_secs(600));
    let older = token("at-older", None, Duration::from_secs(60));
    a.store(&newer).unwrap();
    // A late answer with an earlier expiry: the newer token stays.
    a.store(&older).unwrap();
    assert_eq!(a.load().unwrap(), Some(newer.clone()));

    // A token with a (rotated) refresh token is always written, whatever
    // the clocks that stamped the expiries say.
    let rotated = token("at-rotated", Some("rt-2"), Duration::from_secs(30));
    a.store(&rotated).unwrap();
    assert_eq!(a.load().unwrap(), Some(rotated));
}

#[test]
fn an_unreadable_row_is_never_a_miss_and_never_overwritten() {
    let server = PostgresServer::start();
    let a = cache(&server, "future");
    a.store(&token("at", Some("rt-newest"), Duration::from_secs(600)))
        .unwrap();
    // A newer freshtoken wrote this row in a format this build does not know.
    server.psql("UPDATE freshtoken_cache SET record_format = 'json-v9' WHERE cache_key = 'future'");
    let before = server.psql("SELECT md5(record) FROM freshtoken_cache");
    let e = a.load().unwrap_err();
    assert_eq!(e.kind(), CacheErrorKind::Unreadable, "{e}");
    let e = a
        .store(&token("at-mine", Some("rt-mine"), Duration::from_secs(900)))
        .unwrap_err();
    assert_eq!(e.kind(), CacheErrorKind::Unreadable, "{e}");
    assert!(!e.to_string().contains("rt-"), "{e}");
    assert_eq!(
        server.psql("SELECT md5(record) FROM freshtoken_cache"),
        before
    );
    assert_eq!(
        server.psql("SELECT record_format FROM freshtoken_cache"),
        "json-v9"
    );

    // A record of a newer version inside the known envelope: Unreadable too.
    server.psql(
        "UPDATE freshtoken_cache SET record_format = 'json-v1', \
         record = convert_to('{\"version\":2,\"whatever\":true}', 'UTF8')",
    );
    assert_eq!(a.load().unwrap_err().kind(), CacheErrorKind::Unreadable);

    // Garbage in a known format is corrupt: a miss, and the next store fixes it.
    server.psql("UPDATE freshtoken_cache SET record = '\\x00ff'::bytea");
    assert_eq!(a.load().unwrap(), None);
    let t = token("at-fixed", None, Duration::from_secs(600));
    a.store(&t).unwrap();
    assert_eq!(a.load().unwrap(), Some(t));
}

#[test]
fn tls_with_a_certificate_the_test_made() {
    let server = PostgresServer::start_tls();
    let a = PostgresCache::new(&server.conn_str(), "tls")
        .unwrap()
        .with_root_certificate(&server.ca_pem())
        .unwrap();
    let t = token("at-tls", Some("rt-tls"), Duration::from_secs(60));
    a.store(&t).unwrap();
    assert_eq!(a.load().unwrap(), Some(t));
    // The cache's sessions are encrypted.
    assert_eq!(
        server.psql(
            "SELECT DISTINCT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'freshtoken'"
        ),
        "t"
    );

    // Not trusting the test CA (webpki roots only): the handshake fails.
    let untrusting = PostgresCache::new(&server.conn_str(), "tls").unwrap();
    let e = untrusting.load().unwrap_err();
    assert_eq!(e.kind(), CacheErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("TLS"), "{e}");
    // Plaintext: the server refuses it (pg_hba: hostssl only).
    let plain = PostgresCache::new(
        &format!(
            "host=127.0.0.1 port={} user=freshtoken dbname=postgres sslmode=disable",
            server.port()
        ),
        "tls",
    )
    .unwrap();
    let e = plain.load().unwrap_err();
    assert!(e.to_string().contains("28000"), "{e}");
    // A bad PEM is a clear error.
    let e = PostgresCache::new(&server.conn_str(), "tls")
        .unwrap()
        .with_root_certificate(b"not a certificate")
        .unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
}

#[test]
fn no_secret_in_errors_or_debug() {
    let server = PostgresServer::start();
    let conn = format!(
        "host=127.0.0.1 port={} user=nobody password=PASSWORD-SECRET dbname=postgres",
        server.port()
    );
    let bad = PostgresCache::new(&conn, "k").unwrap();
    // No such role: an authentication-class error.
    let e = bad.load().unwrap_err();
    let shown = format!("{e} {e:?} {bad:?}");
    assert!(!shown.contains("PASSWORD-SECRET"), "{shown}");
    let down = PostgresCache::new("host=127.0.0.1 port=1 user=u password=PASSWORD-SECRET", "k")
        .unwrap()
        .with_connect_timeout(Duration::from_millis(200));
    let e = down.load().unwrap_err();
    assert!(!format!("{e} {e:?} {down:?}").contains("PASSWORD-SECRET"));

    // Token secrets never show in the cache's messages either.
    let a = cache(&server, "s");
    a.store(&token(
        "ACCESS-SECRET",
        Some("REFRESH-SECRET"),
        Duration::from_secs(60),
    ))
    .unwrap();
    server.psql("UPDATE freshtoken_cache SET record_format = 'json-v9'");
    let e = a.load().unwrap_err();
    let shown = format!("{e} {e:?} {a:?}");
    assert!(!shown.contains("SECRET"), "{shown}");
}

#[test]
fn the_async_face_works_under_tokio_and_without_it() {
    let server = PostgresServer::start();
    let a = cache(&server, "async").into_async();
    let t = token("at-async", Some("rt-async"), Duration::from_secs(60));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(a.load().await.unwrap(), None);
        a.store(&t).await.unwrap();
        assert_eq!(a.load().await.unwrap(), Some(t.clone()));
        assert_eq!(
            a.acquire_lease(Duration::from_secs(5)).await.unwrap(),
            LeaseOutcome::Granted
        );
    });
    // A plain executor with no tokio at all.
    let b = cache(&server, "async").into_async();
    futures::executor::block_on(async {
        assert_eq!(b.load().await.unwrap(), Some(t.clone()));
        assert_eq!(
            b.acquire_lease(Duration::from_secs(5)).await.unwrap(),
            LeaseOutcome::Busy
        );
        a.release_lease().await.unwrap();
        assert_eq!(
            b.acquire_lease(Duration::from_secs(5)).await.unwrap(),
            LeaseOutcome::Granted
        );
    });
    // The blocking face of the same cache shares its holder.
    assert_eq!(
        b.blocking().acquire_lease(Duration::from_secs(5)).unwrap(),
        LeaseOutcome::Granted
    );
    let _ = Timestamp::EPOCH;
}

/// Real drivers on the cache: a tokio driver with the async face, and a
/// thread driver with the blocking one (both sealing the record); the
/// second instance takes the first one's token from the table, so the
/// authority sees one request.
#[test]
fn drivers_share_a_token_through_the_table() {
    use freshtoken::driver::Builder;
    use freshtoken::testing::LocalAuthority;

    let server = PostgresServer::start();
    let authority = LocalAuthority::builder()
        .client("pg-client", "pg-secret-value")
        .token_lifetime(Duration::from_secs(600))
        .start()
        .unwrap();
    let keys = || freshtoken::cache::EncryptionKeys::new("k", [9; 32]).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let first_id = rt.block_on(async {
        let cache = cache(&server, "driver:token")
            .encryption(keys())
            .into_async();
        let source = authority.client_credentials("pg-client").build().unwrap();
        let (tokens, driver) = Builder::new()
            .async_cache(cache)
            .spawn(Tokio::current().expect("a tokio runtime"), source);
        let token = tokens.ready().await.unwrap();
        let id = token.id();
        drop(token);
        drop(tokens);
        driver.shutdown().await;
        id
    });
    assert_eq!(authority.requests().len(), 1);
    assert!(server
        .psql("SELECT record_format FROM freshtoken_cache WHERE cache_key = 'driver:token'")
        .starts_with("sealed2:k:"));

    let source = authority.client_credentials("pg-client").build().unwrap();
    let (tokens, driver) = Builder::new()
        .cache(cache(&server, "driver:token").encryption(keys()))
        .spawn_thread(source)
        .unwrap();
    let token = tokens.wait_ready(Duration::from_secs(10)).unwrap();
    assert_eq!(token.id(), first_id, "the second instance fetched its own");
    assert_eq!(authority.requests().len(), 1);
    drop(token);
    drop(tokens);
    driver.shutdown_blocking();
}
