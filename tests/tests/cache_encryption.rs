//! Encryption at rest, the same scenarios against each persistent cache:
//! a real file system, a real `redis-server` and a real PostgreSQL server
//! (started by the tests; `.ci/setup-redis.sh`, `.ci/setup-postgres.sh`).
//!
//! What is checked: records are sealed (no secret in the stored bytes, two
//! seals of one record differ); without the key, with another key, tampered
//! or moved to another cache key they are Unreadable, never a miss, and a
//! store leaves them byte for byte as they were; after a rotation the old
//! key still reads; a plaintext record where encryption is required, and a
//! record of a newer version, are Unreadable and left in place; no message
//! carries a token or a key.

mod cache_support;

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use base64::Engine;
use cache_support::capture_logs;
use freshtoken::cache::{EncryptionKeys, FileCache, PostgresCache, RedisCache, TokenCache};
use freshtoken::{
    AccessToken, CacheError, CacheErrorKind, Clock, RefreshToken, SystemClock, Token,
};
use freshtoken_tests::postgres_server::PostgresServer;
use freshtoken_tests::redis_server::RedisServer;

const ACCESS: &str = "TOPSECRET-access-e2c4";
const REFRESH: &str = "TOPSECRET-refresh-77ab";
/// Key material, checked for in every message too.
const K1: &str = "k1:S0VZLU1BVEVSSUFMLW9uZS10d28tdGhyZWUtZm91ciE";
const K2: &str = "k2:4b45592d4d4154455249414c2d66697665000000000000000000000000000000";
const MATERIAL: [&str; 2] = ["S0VZLU1BVEVSSUFM", "4b45592d4d415445"];

fn token(n: u32) -> Token {
    let now = SystemClock.now();
    Token::new(
        AccessToken::new(format!("{ACCESS}-{n}")),
        now,
        now + Duration::from_secs(300),
        now + Duration::from_secs(600),
    )
    .with_refresh_token(Some(RefreshToken::new(format!("{REFRESH}-{n}"))))
    .with_scope(Some("read".into()))
}

/// The cache key of [`LEGACY_V1`].
const LEGACY_KEY: &str = "legacy-token";
/// A record sealed with [`K1`] by the build before envelope version 2, for
/// the cache key `legacy-token` (its file name, Redis key or row key):
/// access token `TOPSECRET-access-legacy`.
const LEGACY_V1: &str = "FTSEAL1:k1:zOLf9AanbYFOLr60gDQU4y3csfU_eeEbfP1lv9FQtN0l0Hl9dp6wr8hH-0N1-sMtMjQviIYq480JWJWxgSRsMPDzC2uYnp9TPJxrtgW9vUkLjdo2KSq7NtsQxZwCeXdDlevxtau7gBurL-8PMhr31VLkIE-gvtcVYNtjdzhDTNYlzZd2xeNBehvHweaHj94av4ieRZmC_LVkfl_HV_gB1o3TN3gOCP9nR6mXa6cTFxhBMtx089xPsoZxcMCrI4qmhm2zDbwzSCzURHk_A0Q5hpWHhTJd7CfatcSCr3b4ik_9x_oxcf6GyEuhDEeo5FI88lOMzTBLoCte68jQeOrLaBCXC9H1zkYJSNvB10t3q9zM4jA";

fn keys(spec: &str) -> Option<EncryptionKeys> {
    Some(EncryptionKeys::parse(spec).unwrap())
}

fn clean(text: &str) {
    assert!(!text.contains("TOPSECRET"), "a token in: {text}");
    for m in MATERIAL {
        assert!(!text.contains(m), "key material in: {text}");
    }
}

/// An Unreadable error, with nothing secret in it.
fn unreadable<T: std::fmt::Debug>(what: &str, r: Result<T, CacheError>) -> String {
    let e = r.expect_err(what);
    assert_eq!(e.kind(), CacheErrorKind::Unreadable, "{what}: {e}");
    let shown = format!("{e} {e:?}");
    clean(&shown);
    shown
}

/// Makes a cache for a cache key, with or without keys.
type Make = Box<dyn Fn(Option<EncryptionKeys>, &str) -> Box<dyn TokenCache>>;
/// Reads the raw bytes stored under a cache key.
type Get = Box<dyn Fn(&str) -> Option<Vec<u8>>>;
/// Writes raw bytes under a cache key.
type Put = Box<dyn Fn(&str, &[u8])>;

/// One persistent cache, with raw access to what it stores.
struct Backend {
    name: &'static str,
    make: Make,
    get: Get,
    put: Put,
}

fn file_backend(dir: PathBuf) -> Backend {
    let (d1, d2, d3) = (dir.clone(), dir.clone(), dir);
    Backend {
        name: "file",
        make: Box::new(move |keys, key| {
            let cache = FileCache::new(d1.join(key));
            Box::new(match keys {
                Some(k) => cache.encryption(k),
                None => cache,
            })
        }),
        get: Box::new(move |key| std::fs::read(d2.join(key)).ok()),
        // Mode 0600: the file cache refuses files others can read.
        put: Box::new(move |key, bytes| {
            let path = d3.join(key);
            std::fs::write(&path, bytes).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        }),
    }
}

fn redis_backend(server: &RedisServer) -> Backend {
    let url = server.url();
    let (u2, u3) = (url.clone(), url.clone());
    let raw = |url: &str| redis::Client::open(url).unwrap().get_connection().unwrap();
    Backend {
        name: "redis",
        make: Box::new(move |keys, key| {
            let cache = RedisCache::new(&url, key).unwrap();
            Box::new(match keys {
                Some(k) => cache.encryption(k),
                None => cache,
            })
        }),
        get: Box::new(move |key| redis::cmd("GET").arg(key).query(&mut raw(&u2)).unwrap()),
        put: Box::new(move |key, bytes| {
            redis::cmd("SET")
                .arg(key)
                .arg(bytes)
                .query::<()>(&mut raw(&u3))
                .unwrap()
        }),
    }
}

fn postgres_backend(server: &Rc<PostgresServer>) -> Backend {
    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
    let (s1, s2, s3) = (server.clone(), server.clone(), server.clone());
    Backend {
        name: "postgres",
        make: Box::new(move |keys, key| {
            let server = &s1;
            let cache = PostgresCache::new(&server.conn_str(), key).unwrap();
            Box::new(match keys {
                Some(k) => cache.encryption(k),
                None => cache,
            })
        }),
        get: Box::new(move |key| {
            let out = s2.psql(&format!(
                "SELECT encode(record, 'base64') FROM freshtoken_cache WHERE cache_key = '{key}'"
            ));
            (!out.is_empty()).then(|| B64.decode(out.replace('\n', "")).unwrap())
        }),
        put: Box::new(move |key, bytes| {
            // The format column as the cache writes it (see PostgresCache's docs).
            let format = match bytes.strip_prefix(b"FTSEAL") {
                Some(rest) => {
                    let version = rest[0] as char;
                    let id: Vec<u8> = rest[2..]
                        .iter()
                        .take_while(|&&b| b != b':')
                        .copied()
                        .collect();
                    format!("sealed{version}:{}:json-v1", String::from_utf8(id).unwrap())
                }
                None => "json-v1".to_owned(),
            };
            s3.psql(&format!(
                "INSERT INTO freshtoken_cache (cache_key, record, record_format) \
                 VALUES ('{key}', decode('{}', 'base64'), '{format}') \
                 ON CONFLICT (cache_key) DO UPDATE SET record = EXCLUDED.record, \
                 record_format = EXCLUDED.record_format",
                B64.encode(bytes)
            ));
        }),
    }
}

/// Every scenario against one backend.
fn scenarios(b: &Backend) {
    let name = b.name;
    let key = "sealed-token";
    let sealed = (b.make)(keys(K1), key);
    let t1 = token(1);

    // Sealed: no secret at rest; two seals of one record differ.
    let (stored, logs) = capture_logs(|| sealed.store(&t1));
    stored.unwrap();
    logs.iter().for_each(|l| clean(l));
    let first = (b.get)(key).expect("stored");
    assert!(first.starts_with(b"FTSEAL2:k1:"), "{name}");
    clean(&String::from_utf8_lossy(&first));
    sealed.store(&t1).unwrap();
    let second = (b.get)(key).unwrap();
    assert_ne!(first, second, "{name}: the same record sealed twice alike");
    assert_eq!(sealed.load().unwrap(), Some(t1.clone()), "{name}");
    assert_eq!((b.make)(keys(K1), key).load().unwrap(), Some(t1.clone()));

    // Without the key, or with another one: Unreadable, and left alone.
    for (who, cache) in [
        ("no keys", (b.make)(None, key)),
        ("another key", (b.make)(keys(K2), key)),
    ] {
        let (loaded, logs) = capture_logs(|| cache.load());
        unreadable(&format!("{name}: {who}: load"), loaded);
        logs.iter().for_each(|l| clean(l));
        let (stored, logs) = capture_logs(|| cache.store(&token(9)));
        unreadable(&format!("{name}: {who}: store"), stored);
        logs.iter().for_each(|l| clean(l));
        assert_eq!((b.get)(key).unwrap(), second, "{name}: {who} overwrote it");
    }

    // Rotation: the new key first, the old one second, reads the old record
    // and seals new ones with the new key; an instance that only has the
    // old key then cannot read them and leaves them alone.
    let rotated = (b.make)(keys(&format!("{K2},{K1}")), key);
    assert_eq!(
        rotated.load().unwrap(),
        Some(t1.clone()),
        "{name}: rotation"
    );
    let t2 = token(2);
    rotated.store(&t2).unwrap();
    let after = (b.get)(key).unwrap();
    assert!(after.starts_with(b"FTSEAL2:k2:"), "{name}");
    unreadable(&format!("{name}: old key only"), sealed.load());
    unreadable(&format!("{name}: old key only, store"), sealed.store(&t1));
    assert_eq!((b.get)(key).unwrap(), after);
    assert_eq!(rotated.load().unwrap(), Some(t2.clone()));

    // Tampered: one character of the sealed body changed.
    let mut tampered = after.clone();
    let i = tampered.len() - 10;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    (b.put)(key, &tampered);
    let shown = unreadable(&format!("{name}: tampered"), rotated.load());
    assert!(shown.contains("altered"), "{shown}");
    unreadable(&format!("{name}: tampered, store"), rotated.store(&t2));
    assert_eq!(
        (b.get)(key).unwrap(),
        tampered,
        "{name}: tampered overwritten"
    );
    (b.put)(key, &after);
    assert_eq!(rotated.load().unwrap(), Some(t2.clone()));

    // Moved: the same sealed bytes under another cache key.
    (b.put)("other-token", &after);
    let moved = (b.make)(keys(&format!("{K2},{K1}")), "other-token");
    let shown = unreadable(&format!("{name}: moved"), moved.load());
    assert!(shown.contains("moved"), "{shown}");
    unreadable(&format!("{name}: moved, store"), moved.store(&t1));
    assert_eq!((b.get)("other-token").unwrap(), after);

    // Plaintext where encryption is required: Unreadable (it may be a
    // not-yet-upgraded peer's newest token), unless migrating.
    let plain_key = "plain-token";
    (b.make)(None, plain_key).store(&t1).unwrap();
    let plain = (b.get)(plain_key).unwrap();
    assert!(plain.starts_with(br#"{"version":1,"#), "{name}");
    let strict = (b.make)(keys(K1), plain_key);
    unreadable(&format!("{name}: plaintext"), strict.load());
    unreadable(&format!("{name}: plaintext, store"), strict.store(&t2));
    assert_eq!((b.get)(plain_key).unwrap(), plain);
    let migrating = (b.make)(
        Some(EncryptionKeys::parse(K1).unwrap().accept_plaintext(true)),
        plain_key,
    );
    assert_eq!(migrating.load().unwrap(), Some(t1.clone()), "{name}");
    migrating.store(&t2).unwrap();
    assert!((b.get)(plain_key).unwrap().starts_with(b"FTSEAL2:k1:"));
    assert_eq!(strict.load().unwrap(), Some(t2.clone()));

    // A record of a newer version (no encryption involved): Unreadable,
    // left in place, not a miss.
    let newer_key = "newer-token";
    let newer = br#"{"version":99,"access_token":"TOPSECRET-x","future":true}"#;
    (b.put)(newer_key, newer);
    let old_build = (b.make)(None, newer_key);
    unreadable(&format!("{name}: newer version"), old_build.load());
    unreadable(
        &format!("{name}: newer version, store"),
        old_build.store(&t1),
    );
    assert_eq!((b.get)(newer_key).unwrap(), newer.to_vec(), "{name}");

    // A record sealed by an earlier build (envelope version 1, bound to the
    // cache key alone) is still read, and the next store rewrites it in
    // version 2.
    (b.put)(LEGACY_KEY, LEGACY_V1.as_bytes());
    let upgraded = (b.make)(keys(K1), LEGACY_KEY);
    let legacy = upgraded
        .load()
        .unwrap()
        .expect("a version-1 record is read");
    assert_eq!(
        legacy.access_token().expose_secret(),
        "TOPSECRET-access-legacy",
        "{name}"
    );
    upgraded.store(&t2).unwrap();
    assert!(
        (b.get)(LEGACY_KEY).unwrap().starts_with(b"FTSEAL2:k1:"),
        "{name}"
    );
    assert_eq!(upgraded.load().unwrap(), Some(t2.clone()), "{name}");

    // Garbage is corrupt, not unreadable: a miss, replaced by the next store.
    let junk_key = "junk-token";
    (b.put)(junk_key, b"\x00\xffjunk");
    let fixer = (b.make)(keys(K1), junk_key);
    assert_eq!(fixer.load().unwrap(), None, "{name}: junk is a miss");
    fixer.store(&t1).unwrap();
    assert_eq!(fixer.load().unwrap(), Some(t1));
}

#[test]
fn file_cache_with_encryption() {
    let dir = tempfile::tempdir().unwrap();
    let backend = file_backend(dir.path().to_owned());
    scenarios(&backend);
    // Nothing that could not be read was moved aside as corrupt; only the
    // junk file was.
    let aside: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(aside[0].starts_with("junk-token.corrupt-"), "{aside:?}");
}

/// A sealed file copied, name and all, into another directory is refused:
/// the record is bound to the file's full path, not to its name.
#[test]
fn a_sealed_file_copied_to_another_directory_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let (home, elsewhere) = (root.path().join("home"), root.path().join("elsewhere"));
    let original = FileCache::new(home.join("token")).encryption(keys(K1).unwrap());
    let t1 = token(1);
    original.store(&t1).unwrap();
    let bytes = std::fs::read(home.join("token")).unwrap();
    let copy = file_backend(elsewhere.clone());
    std::fs::create_dir(&elsewhere).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    (copy.put)("token", &bytes);
    let moved = (copy.make)(keys(K1), "token");
    let shown = unreadable("a copy in another directory", moved.load());
    assert!(shown.contains("directory"), "{shown}");
    unreadable("a copy in another directory, store", moved.store(&token(2)));
    assert_eq!(
        (copy.get)("token").unwrap(),
        bytes,
        "the copy was overwritten"
    );
    // The original still reads in its own place.
    assert_eq!(original.load().unwrap(), Some(t1));
}

#[test]
fn redis_cache_with_encryption() {
    let server = RedisServer::start_tcp();
    scenarios(&redis_backend(&server));
}

#[test]
fn postgres_cache_with_encryption() {
    let server = Rc::new(PostgresServer::start());
    scenarios(&postgres_backend(&server));
    assert_eq!(
        server.psql("SELECT record_format FROM freshtoken_cache WHERE cache_key = 'sealed-token'"),
        "sealed2:k2:json-v1"
    );
}

/// A sealed PostgreSQL row copied, key and all, into another table is
/// refused: the record is bound to its table and its row key.
#[test]
fn a_sealed_row_copied_to_another_table_is_refused() {
    let server = PostgresServer::start();
    let cache = |table: &str| {
        PostgresCache::new(&server.conn_str(), "the-token")
            .unwrap()
            .table(table)
            .unwrap()
            .encryption(keys(K1).unwrap())
    };
    let (home, other) = (cache("freshtoken_cache"), cache("other_cache"));
    let t1 = token(1);
    home.store(&t1).unwrap();
    // The other table exists (a store of its own), then gets the copy.
    other.store(&token(2)).unwrap();
    server.psql(
        "UPDATE other_cache SET (record, record_format) = \
         (SELECT record, record_format FROM freshtoken_cache WHERE cache_key = 'the-token') \
         WHERE cache_key = 'the-token'",
    );
    let copied = |table: &str| {
        server.psql(&format!(
            "SELECT encode(record, 'hex') FROM {table} WHERE cache_key = 'the-token'"
        ))
    };
    assert_eq!(copied("other_cache"), copied("freshtoken_cache"));
    let shown = unreadable("a copy in another table", other.load());
    assert!(shown.contains("table"), "{shown}");
    unreadable("a copy in another table, store", other.store(&token(3)));
    assert_eq!(copied("other_cache"), copied("freshtoken_cache"));
    assert_eq!(home.load().unwrap(), Some(t1));
}

#[test]
fn keys_from_the_environment_and_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    std::fs::write(&path, format!("# cache keys, newest first\n{K2}\n{K1}\n")).unwrap();
    let from_file = EncryptionKeys::from_file(&path).unwrap();
    assert_eq!(from_file.ids(), ["k2", "k1"]);
    // The environment, read by a real process of its own.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cache_worker"))
        .args(["keys-env", "FRESHTOKEN_TEST_CACHE_KEYS"])
        .env("FRESHTOKEN_TEST_CACHE_KEYS", format!("{K2}, {K1}"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "k2,k1");
    let e = EncryptionKeys::from_env("FRESHTOKEN_TEST_CACHE_KEYS_NOT_SET").unwrap_err();
    assert!(e.to_string().contains("NOT_SET"), "{e}");
    // A record sealed with keys from the file reads with the same keys
    // given as text, in another order.
    let cache = FileCache::new(dir.path().join("t")).encryption(from_file);
    let t3 = token(3);
    cache.store(&t3).unwrap();
    let same = FileCache::new(dir.path().join("t"))
        .encryption(EncryptionKeys::parse(&format!("{K1} {K2}")).unwrap());
    assert_eq!(same.load().unwrap(), Some(t3));
    // The caches' Debug names the key ids, never the keys.
    let shown = format!(
        "{same:?} {:?} {:?}",
        RedisCache::new("redis://127.0.0.1:1/", "k")
            .unwrap()
            .encryption(EncryptionKeys::parse(K1).unwrap()),
        PostgresCache::new("host=127.0.0.1 port=1", "k")
            .unwrap()
            .encryption(EncryptionKeys::parse(K2).unwrap()),
    );
    clean(&shown);
    assert!(shown.contains("k1") && shown.contains("k2"), "{shown}");
    // Bad files: missing, too large, not keys; no material in the messages.
    assert!(EncryptionKeys::from_file(dir.path().join("missing")).is_err());
    std::fs::write(&path, vec![b'a'; 70_000]).unwrap();
    assert!(EncryptionKeys::from_file(&path)
        .unwrap_err()
        .to_string()
        .contains("64 KiB"));
    std::fs::write(&path, "k1:S0VZLU1BVEVSSUFMLW9uZS10d28\n").unwrap();
    let e = EncryptionKeys::from_file(&path).unwrap_err();
    clean(&format!("{e} {e:?}"));
}
