//! What a DPoP proof costs: the key is parsed from its zeroized PKCS#8
//! encoding for every proof (ring keeps no wiped copy), then the header
//! (with the public JWK) and claims are encoded and signed with ES256. The
//! key is made with the `openssl` command at start, so that none is kept
//! in the repository (and so that an OpenSSL PKCS#8 key is shown to load).
//!
//! `cargo bench -p freshtoken --features oauth2,dpop --bench dpop`

use std::hint::black_box;
use std::process::Command;

use criterion::{criterion_group, criterion_main, Criterion};
use freshtoken::oauth2::DpopKey;

fn bench(c: &mut Criterion) {
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .output()
        .expect("the `openssl` command");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = DpopKey::from_pem(&out.stdout).expect("an OpenSSL P-256 PKCS#8 key");
    let url = "https://auth.example.com/oauth2/token";
    c.bench_function("dpop_proof/token_request", |b| {
        b.iter(|| {
            key.proof("POST", black_box(url))
                .nonce("eyJ7S_zG.eyJH0-Z.HX4w-7v")
                .sign()
                .unwrap()
        })
    });
    c.bench_function("dpop_proof/resource_request_with_ath", |b| {
        b.iter(|| {
            key.proof("GET", black_box("https://api.example.com/orders?page=2"))
                .access_token("eyJhbGciOiJSUzI1NiJ9.an-access-token.signature")
                .sign()
                .unwrap()
        })
    });
    c.bench_function("dpop_key/generate", |b| {
        b.iter(|| DpopKey::generate().unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
