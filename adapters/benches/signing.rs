//! What a signed client assertion costs: the key is parsed from its
//! zeroized encoding for every signature (ring keeps no wiped copy), then
//! the JWS signing input is signed. Keys are made with the `openssl`
//! command at start (RSA-2048 and P-256, PKCS#8) so that none is kept in
//! the repository.
//!
//! `cargo bench -p freshtoken --features oauth2 --bench signing`

use std::hint::black_box;
use std::process::Command;

use criterion::{criterion_group, criterion_main, Criterion};
use freshtoken::oauth2::JwsAlgorithm;
use freshtoken::oauth2::SigningKey;

fn pem(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the `openssl` command");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn bench(c: &mut Criterion) {
    let rsa = pem(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
    ]);
    let ec = pem(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ]);
    let message = [b'x'; 400]; // about a client assertion's signing input
    let keys = [
        (
            "RS256",
            SigningKey::from_pem(JwsAlgorithm::Rs256, &rsa).unwrap(),
        ),
        (
            "PS256",
            SigningKey::from_pem(JwsAlgorithm::Ps256, &rsa).unwrap(),
        ),
        (
            "ES256",
            SigningKey::from_pem(JwsAlgorithm::Es256, &ec).unwrap(),
        ),
        ("HS256", SigningKey::hs256(&[7; 32]).unwrap()),
    ];
    let mut group = c.benchmark_group("sign_assertion");
    for (name, key) in &keys {
        group.bench_function(*name, |b| b.iter(|| key.sign(black_box(&message)).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
