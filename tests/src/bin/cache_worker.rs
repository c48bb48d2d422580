//! A helper process for the file cache tests (run by `tests/cache_file.rs`).
//!
//! * `cache_worker stress <path> <ops> <seed> <write_percent>`: mixed reads
//!   and writes on one cache file; prints
//!   `reads=R writes=W torn=T unreadable=U misses=M` and exits 0.
//!   A torn read is bytes that do not decode, or a token whose parts do not
//!   belong together; an unreadable one is an I/O error other than a missing
//!   file; a miss is `FileCache::load` finding nothing.
//! * `cache_worker lease <path> <ttl_ms>`: takes the lease, prints `granted`
//!   or `busy`, and then sleeps, holding it until killed.
//! * `cache_worker pg-lease <conn> <key> <marker dir> <run ms>`: for
//!   `run ms`, takes a PostgreSQL cache's lease (TTL 10 s) as often as it
//!   can, and while holding it creates `<marker dir>/inside` exclusively,
//!   holds it 5 ms, removes it, and releases the lease. Prints
//!   `grants=G busy=B overlaps=O errors=E`: an overlap is finding the marker
//!   already there, i.e. two holders at once.
//! * `cache_worker keys-env <var>`: reads cache encryption keys from the
//!   environment variable and prints their ids, comma-separated.

use std::path::PathBuf;
use std::time::Duration;

use freshtoken::cache::LeaseOutcome;
use freshtoken::cache::{record, FileCache, PostgresCache, TokenCache};
use freshtoken::{AccessToken, RefreshToken, Timestamp, Token, TokenId};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("stress") if args.len() == 5 => stress(
            PathBuf::from(&args[1]),
            args[2].parse().expect("ops"),
            args[3].parse().expect("seed"),
            args[4].parse().expect("write percent"),
        ),
        Some("lease") if args.len() == 3 => lease(
            PathBuf::from(&args[1]),
            Duration::from_millis(args[2].parse().expect("ttl ms")),
        ),
        Some("pg-lease") if args.len() == 5 => pg_lease(
            &args[1],
            &args[2],
            PathBuf::from(&args[3]),
            Duration::from_millis(args[4].parse().expect("run ms")),
        ),
        Some("keys-env") if args.len() == 2 => {
            let keys = freshtoken::cache::EncryptionKeys::from_env(&args[1]).expect("keys");
            println!("{}", keys.ids().join(","));
        }
        _ => {
            eprintln!("usage: cache_worker stress <path> <ops> <seed> <write_percent> | lease <path> <ttl_ms> | pg-lease <conn> <key> <marker dir> <run ms>");
            std::process::exit(2);
        }
    }
}

/// A token whose parts check each other: the scope is the access token's id
/// and the refresh token repeats the access token, so a record mixed from
/// two writes cannot pass.
fn token(seed: u64, i: u64) -> Token {
    // About 1 KiB in all, so that a non-atomic write would be caught mid-way.
    let access = format!("at-{seed}-{i}-{}", "x".repeat(480));
    let refresh = format!("rt-{access}");
    let scope = TokenId::of(access.as_bytes()).to_string();
    let now = Timestamp::from_millis(1_700_000_000_000 + i);
    Token::new(
        AccessToken::new(access),
        now,
        now + Duration::from_secs(45),
        now + Duration::from_secs(60),
    )
    .with_refresh_token(Some(RefreshToken::new(refresh)))
    .with_scope(Some(scope))
}

fn consistent(t: &Token) -> bool {
    let access = t.access_token().expose_secret();
    t.scope() == Some(TokenId::of(access.as_bytes()).to_string().as_str())
        && t.refresh_token()
            .and_then(|rt| rt.expose_secret().strip_prefix("rt-"))
            == Some(access)
}

fn stress(path: PathBuf, ops: u64, seed: u64, write_percent: u64) {
    let cache = FileCache::new(&path);
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let (mut reads, mut writes, mut torn, mut unreadable, mut misses) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for i in 0..ops {
        // xorshift64: a tiny deterministic generator is all this needs.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if rng % 100 < write_percent {
            cache.store(&token(seed, i)).expect("store");
            writes += 1;
        } else if rng.is_multiple_of(2) {
            // The raw path: every byte sequence a reader can observe.
            reads += 1;
            match std::fs::read(&path) {
                Ok(bytes) => match record::decode(&bytes) {
                    Ok(t) if consistent(&t) => {}
                    other => {
                        eprintln!(
                            "torn raw read: {} bytes, {:?}",
                            bytes.len(),
                            other.map(|t| t.id())
                        );
                        torn += 1
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => misses += 1,
                Err(_) => unreadable += 1,
            }
        } else {
            // The cache's own path, which would hide a torn file as a miss.
            reads += 1;
            match cache.load() {
                Ok(Some(t)) if consistent(&t) => {}
                Ok(Some(_)) => torn += 1,
                Ok(None) => {
                    eprintln!("miss via load");
                    misses += 1
                }
                Err(_) => unreadable += 1,
            }
        }
    }
    println!("reads={reads} writes={writes} torn={torn} unreadable={unreadable} misses={misses}");
}

fn lease(path: PathBuf, ttl: Duration) {
    let cache = FileCache::new(path);
    match cache.acquire_lease(ttl).expect("acquire lease") {
        LeaseOutcome::Granted => println!("granted"),
        other => {
            println!("{}", format!("{other:?}").to_lowercase());
            return;
        }
    }
    // Hold it (never release) until the test kills us.
    std::thread::sleep(Duration::from_secs(120));
}

fn pg_lease(conn: &str, key: &str, dir: PathBuf, run: Duration) {
    let cache = PostgresCache::new(conn, key).expect("a connection string");
    let marker = dir.join("inside");
    let started = std::time::Instant::now();
    let (mut grants, mut busy, mut overlaps, mut errors) = (0u64, 0u64, 0u64, 0u64);
    while started.elapsed() < run {
        match cache.acquire_lease(Duration::from_secs(10)) {
            Ok(LeaseOutcome::Granted) => {
                grants += 1;
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&marker)
                {
                    Ok(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        std::fs::remove_file(&marker).expect("remove the marker");
                    }
                    Err(_) => overlaps += 1,
                }
                cache.release_lease().expect("release");
                // Give the others a chance before trying again.
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(_) => {
                busy += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => {
                eprintln!("pg-lease: {e}");
                errors += 1;
            }
        }
    }
    println!("grants={grants} busy={busy} overlaps={overlaps} errors={errors}");
}
