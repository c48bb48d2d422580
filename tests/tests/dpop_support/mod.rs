//! What the DPoP tests share: the validation of a DPoP proof (RFC 9449
//! 4.3) that the loopback authority and the resource server both do, and
//! the loopback authority itself.
#![allow(dead_code)]

pub mod authority;

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;

/// A new P-256 key as a PKCS#8 document, for instances that load one key
/// (`DpopKey::from_pkcs8_der`, or as PEM `DpopKey::from_pem_file`) rather
/// than generate their own.
pub fn pkcs8_key() -> Vec<u8> {
    ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap()
    .as_ref()
    .to_vec()
}

pub fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `ath`: the base64url SHA-256 of an access token.
pub fn token_hash(token: &str) -> String {
    b64url(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// Validates a DPoP proof for a request with `htm` to `url` (RFC 9449 4.3, but for the
/// nonce, which the caller checks): returns the key's thumbprint and the
/// claims.
pub fn validate_proof(
    proof: &str,
    htm: &str,
    url: &str,
    jtis: &mut HashSet<String>,
) -> Result<(String, serde_json::Value), String> {
    let parts: Vec<&str> = proof.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err("not a compact JWS".into());
    };
    let json = |part: &str| -> Result<serde_json::Value, String> {
        serde_json::from_slice(&b64(part).ok_or("not base64url")?).map_err(|e| e.to_string())
    };
    let (h, c) = (json(header)?, json(claims)?);
    if h["typ"] != "dpop+jwt" {
        return Err(format!("typ {}", h["typ"]));
    }
    if h["alg"] != "ES256" {
        return Err(format!("alg {}", h["alg"]));
    }
    let jwk = &h["jwk"];
    if jwk["kty"] != "EC" || jwk["crv"] != "P-256" {
        return Err("jwk is not an EC P-256 key".into());
    }
    if jwk.get("d").is_some() {
        return Err("jwk holds a private key".into());
    }
    let (x, y) = (
        jwk["x"].as_str().ok_or("no x")?,
        jwk["y"].as_str().ok_or("no y")?,
    );
    let mut point = vec![4u8];
    point.extend(b64(x).ok_or("x not base64url")?);
    point.extend(b64(y).ok_or("y not base64url")?);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
        .verify(
            format!("{header}.{claims}").as_bytes(),
            &b64(signature).ok_or("signature not base64url")?,
        )
        .map_err(|_| "the signature does not verify with the embedded jwk".to_owned())?;
    if c["htm"] != htm {
        return Err(format!("htm {}", c["htm"]));
    }
    if c["htu"] != url {
        return Err(format!("htu {} for {url}", c["htu"]));
    }
    let iat = c["iat"].as_i64().ok_or("no numeric iat")?;
    if (iat - now_secs()).abs() > 60 {
        return Err(format!("iat {iat} outside the window"));
    }
    let jti = c["jti"].as_str().ok_or("no jti")?;
    if jti.len() < 16 {
        return Err("jti too short".into());
    }
    if !jtis.insert(jti.to_owned()) {
        return Err(format!("jti {jti} replayed"));
    }
    // RFC 7638: the required members in lexicographic order.
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let jkt = b64url(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref());
    Ok((jkt, c))
}
