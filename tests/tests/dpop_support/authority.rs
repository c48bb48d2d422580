//! A loopback DPoP authority (RFC 9449) for `oauth2_dpop.rs` and
//! `fleet_dpop.rs`: it validates every proof fully (the ES256 signature
//! with the embedded key, `typ`, `alg`, `htm`, `htu`, the `iat` window,
//! `jti` replay, the nonce), demands nonces, and binds the tokens and
//! refresh tokens it issues to the proof's key. It keeps every proof's
//! `jti` and each token it issued with the thumbprint it is bound to.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;

use super::validate_proof;

pub const CLIENT: &str = "svc";
pub const SECRET: &str = "svc-secret-3f9a1c";

/// How the authority treats nonces.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NonceMode {
    /// Demands one, and gives a new one with every token it issues.
    RotateOnSuccess,
    /// Refuses every nonce, giving a new one each time.
    NeverSatisfied,
}

/// A proof the authority accepted.
#[derive(Clone, Debug)]
pub struct SeenProof {
    pub jti: String,
    pub jkt: String,
    pub nonce: Option<String>,
}

#[derive(Default)]
pub struct State {
    nonce_counter: u64,
    /// Every proof's `jti`, refused proofs' included.
    pub jtis: HashSet<String>,
    pub accepted: Vec<SeenProof>,
    /// Proofs refused, and why.
    pub refused: Vec<String>,
    /// Proofs refused because their `jti` had been seen before.
    pub replays: usize,
    /// `use_dpop_nonce` answers given.
    pub challenges: usize,
    pub requests: usize,
    pub issued: usize,
    /// Each access token issued -> the thumbprint of the key it is bound
    /// to (its `cnf.jkt`).
    pub bound: HashMap<String, String>,
    /// Refresh token -> the thumbprint of the key it is bound to.
    refresh_tokens: HashMap<String, String>,
}

impl State {
    fn nonce(&self) -> String {
        format!("nonce-{}", self.nonce_counter)
    }
}

pub struct Authority {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl Authority {
    pub fn start(mode: NonceMode, expires_in: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let (shared, own_url) = (state.clone(), url.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let (state, url) = (shared.clone(), own_url.clone());
                std::thread::spawn(move || {
                    if let Some((head, body)) = read_request(&mut stream) {
                        let answer = handle(&state, &url, mode, expires_in, &head, &body);
                        let _ = stream.write_all(&answer);
                    }
                });
            }
        });
        Authority { url, state }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn seed_refresh_token(&self, token: &str, jkt: &str) {
        self.state()
            .refresh_tokens
            .insert(token.to_owned(), jkt.to_owned());
    }
}

/// A request's head: the request line as `:request`, then the headers
/// (lowercase names).
type Head = Vec<(String, String)>;

/// Reads a request: its head and body.
fn read_request(stream: &mut TcpStream) -> Option<(Head, Vec<u8>)> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let request_line = lines.next()?.to_owned();
            let mut headers = vec![(":request".to_owned(), request_line)];
            for line in lines {
                let (name, value) = line.split_once(':')?;
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
            let len = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some((headers, buf[end + 4..end + 4 + len].to_vec()));
            }
        }
        match stream.read(&mut chunk) {
            Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

fn answer(status: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n\
         Content-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn form(body: &[u8]) -> HashMap<String, String> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                if let Ok(b) = u8::from_str_radix(hex, 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn handle(
    state: &Mutex<State>,
    url: &str,
    mode: NonceMode,
    expires_in: u64,
    head: &[(String, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut s = state.lock().unwrap();
    s.requests += 1;
    let header = |name: &str| -> Vec<&str> {
        head.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let invalid_proof = |s: &mut State, why: String| {
        s.replays += usize::from(why.contains("replayed"));
        s.refused.push(why);
        answer("400 Bad Request", "", r#"{"error":"invalid_dpop_proof"}"#)
    };
    let proofs = header("dpop");
    let [proof] = proofs[..] else {
        return invalid_proof(&mut s, format!("{} DPoP headers", proofs.len()));
    };
    let (jkt, claims) = match validate_proof(proof, "POST", url, &mut s.jtis) {
        Ok(ok) => ok,
        Err(why) => return invalid_proof(&mut s, why),
    };
    let nonce = claims["nonce"].as_str().map(str::to_owned);
    if mode == NonceMode::NeverSatisfied || nonce.as_deref() != Some(s.nonce().as_str()) {
        s.challenges += 1;
        if mode == NonceMode::NeverSatisfied {
            s.nonce_counter += 1;
        }
        let fresh = s.nonce();
        return answer(
            "400 Bad Request",
            &format!("DPoP-Nonce: {fresh}\r\n"),
            r#"{"error":"use_dpop_nonce","error_description":"Authorization server requires nonce in DPoP proof"}"#,
        );
    }
    s.accepted.push(SeenProof {
        jti: claims["jti"].as_str().unwrap().to_owned(),
        jkt: jkt.clone(),
        nonce,
    });
    let params = form(body);
    match params.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {
            let basic = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT}:{SECRET}"))
            );
            if header("authorization") != [basic.as_str()] {
                return answer("401 Unauthorized", "", r#"{"error":"invalid_client"}"#);
            }
        }
        Some("refresh_token") => {
            let presented = params.get("refresh_token").cloned().unwrap_or_default();
            match s.refresh_tokens.remove(&presented) {
                Some(bound) if bound == jkt => {}
                Some(bound) => {
                    // Not the key it is bound to: refused, and kept.
                    s.refresh_tokens.insert(presented, bound);
                    return answer("400 Bad Request", "", r#"{"error":"invalid_grant"}"#);
                }
                None => return answer("400 Bad Request", "", r#"{"error":"invalid_grant"}"#),
            }
        }
        _ => {
            return answer(
                "400 Bad Request",
                "",
                r#"{"error":"unsupported_grant_type"}"#,
            )
        }
    }
    s.issued += 1;
    let n = s.issued;
    let access_token = format!("at-{n}-{jkt}");
    s.bound.insert(access_token.clone(), jkt.clone());
    let refresh = format!("rt-{n}");
    s.refresh_tokens.insert(refresh.clone(), jkt.clone());
    // A new nonce with every token: the client must take it from here.
    s.nonce_counter += 1;
    let next = s.nonce();
    answer(
        "200 OK",
        &format!("DPoP-Nonce: {next}\r\n"),
        &format!(
            r#"{{"access_token":"{access_token}","token_type":"DPoP","expires_in":{expires_in},"refresh_token":"{refresh}"}}"#
        ),
    )
}
