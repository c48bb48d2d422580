//! Issue 23's fleet: eight real processes share one DPoP key (a PEM file)
//! and one file-cache directory against the loopback DPoP authority, with
//! 2 s tokens, while a ninth process with another key uses the same
//! directory. The eight should cause about one token request per refresh
//! period between them (the lease makes it one), no proof's `jti` may ever
//! be seen twice, every token served must be a `DPoP` token bound to the
//! serving process's own key, and the ninth must never serve the eight's
//! token: it fetches its own.
//!
//! Run with `--nocapture` to see the figures.

mod dpop_support;
mod fleet_support;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use dpop_support::authority::{Authority, NonceMode, CLIENT, SECRET};
use fleet_support::{refresh_period, LIFETIME, MAX_RATIO, READ_EVERY_MS, WORKERS};
use freshtoken::oauth2::DpopKey;
use freshtoken::TokenId;
use serde_json::Value;

/// Several refresh periods, well inside the suite's patience.
const RUN: Duration = Duration::from_secs(12);

/// Writes a new P-256 key to `path` as PKCS#8 PEM (what `openssl genpkey`
/// writes), and returns its thumbprint.
fn write_key(path: &Path) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(dpop_support::pkcs8_key());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    std::fs::write(path, &pem).unwrap();
    DpopKey::from_pem(pem.as_bytes())
        .unwrap()
        .thumbprint()
        .to_owned()
}

fn spawn_worker(key: &Path, cache_dir: &Path, authority: &Authority) -> Child {
    Command::new(env!("CARGO_BIN_EXE_fleet_worker"))
        .args([
            "dpop",
            key.to_str().unwrap(),
            cache_dir.to_str().unwrap(),
            &authority.url,
            CLIENT,
            &RUN.as_millis().to_string(),
            &READ_EVERY_MS.to_string(),
        ])
        .env("FLEET_CLIENT_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("a fleet_worker process")
}

/// A worker's output (see `fleet_worker dpop`): one JSON line.
fn output(child: Child) -> String {
    let out = child.wait_with_output().expect("the worker's output");
    assert!(out.status.success(), "a worker failed: {:?}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn eight_processes_share_a_dpop_key_and_a_cache_and_another_key_gets_its_own() {
    let authority = Authority::start(NonceMode::RotateOnSuccess, LIFETIME.as_secs());
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    std::fs::create_dir(&cache_dir).unwrap();
    let (shared_key, other_key) = (dir.path().join("shared.pem"), dir.path().join("other.pem"));
    let (shared, other) = (write_key(&shared_key), write_key(&other_key));

    let mut children: Vec<Child> = (0..WORKERS)
        .map(|_| spawn_worker(&shared_key, &cache_dir, &authority))
        .collect();
    children.push(spawn_worker(&other_key, &cache_dir, &authority));
    let outputs: Vec<String> = children.into_iter().map(output).collect();
    let workers: Vec<Value> = outputs
        .iter()
        .map(|line| serde_json::from_str(line.trim()).expect("a JSON summary"))
        .collect();

    let s = authority.state();
    // The workers show ids, never a token.
    for token in s.bound.keys() {
        assert!(
            !outputs.iter().any(|o| o.contains(token.as_str())),
            "a token printed"
        );
    }
    let issued_to = |jkt: &str| s.bound.values().filter(|k| *k == jkt).count();
    let periods = RUN.as_secs_f64() / refresh_period().as_secs_f64();
    let shared_ratio = issued_to(&shared) as f64 / periods;
    let fetched = |w: &Value| w["fetched"].as_u64().unwrap();
    println!(
        "fleet[dpop]: {WORKERS} processes with one key, {:?} tokens, {RUN:?} ({periods:.1} refresh periods): \
         {} tokens issued to the shared key (ratio {shared_ratio:.2}; the drivers fetched {}), \
         {} to the other key (its driver fetched {}); {} requests, {} nonce challenges, \
         {} proofs with {} distinct jtis, {} replays, {} refused",
        LIFETIME,
        issued_to(&shared),
        workers[..WORKERS].iter().map(fetched).sum::<u64>(),
        issued_to(&other),
        fetched(&workers[WORKERS]),
        s.requests,
        s.challenges,
        s.requests,
        s.jtis.len(),
        s.replays,
        s.refused.len(),
    );

    // No proof's jti seen twice: none refused as a replay, and as many
    // distinct jtis as requests (every request carried one proof).
    assert_eq!(s.replays, 0, "replayed jtis: {:?}", s.refused);
    assert_eq!(s.jtis.len(), s.requests, "a jti was reused");
    assert!(s.refused.is_empty(), "refused proofs: {:?}", s.refused);

    // Every token served was a DPoP token the authority bound to the
    // serving process's own key: the other key's process never served the
    // shared key's token, and fetched its own.
    for (i, w) in workers.iter().enumerate() {
        let jkt = w["jkt"].as_str().unwrap();
        assert_eq!(jkt, if i < WORKERS { &shared } else { &other });
        assert_eq!(w["not_dpop"], 0, "worker {i} served a non-DPoP token");
        assert_eq!(
            w["invalid_after_first"], 0,
            "worker {i}: reads without a valid token after the first: {w}"
        );
        let served = w["tokens"].as_array().unwrap();
        assert!(!served.is_empty(), "worker {i} served no token: {w}");
        for id in served {
            let bound = s
                .bound
                .iter()
                .find(|(t, _)| TokenId::of(t.as_bytes()).to_string() == *id);
            let (_, bound) = bound.unwrap_or_else(|| panic!("worker {i}: {id} not issued"));
            assert_eq!(
                bound, jkt,
                "worker {i} served token {id} bound to another key"
            );
        }
    }
    assert!(
        fetched(&workers[WORKERS]) >= 1,
        "the other key fetched nothing"
    );
    let seen: HashSet<&str> = s.accepted.iter().map(|p| p.jkt.as_str()).collect();
    assert_eq!(seen, HashSet::from([shared.as_str(), other.as_str()]));

    // About one token per refresh period for the eight together.
    assert!(
        shared_ratio <= MAX_RATIO,
        "{} tokens for the shared key in {periods:.1} refresh periods (ratio {shared_ratio:.2} > {MAX_RATIO})",
        issued_to(&shared),
    );
}
