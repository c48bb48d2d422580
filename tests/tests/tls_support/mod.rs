//! The TLS-capable parts of freshtoken, each used for real: an OAuth2 fetch
//! over https (ureq, with a private CA, and with the platform verifier), a
//! PostgreSQL cache over TLS, and `rediss://` caches (blocking and async,
//! single server; cluster and Sentinel builds). Shared by the crypto-provider
//! tests, each in a test binary of its own: the provider is process-wide.

#![allow(dead_code)] // each test binary uses a part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshtoken::cache::{AsyncRedisCache, AsyncTokenCache, PostgresCache, RedisCache, TokenCache};
use freshtoken::oauth2::{ClientCredentials, UreqTransport};
use freshtoken::source::{FetchRequest, TokenSource};
use freshtoken::{AccessToken, CacheError, Clock, FetchError, SystemClock, Token};
use freshtoken_tests::postgres_server::PostgresServer;
use freshtoken_tests::redis_server::{make_certificates, RedisServer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// An https token endpoint on 127.0.0.1 (rustls with ring's provider, given
/// explicitly), with a certificate from a CA of its own. It answers every
/// request with a token and records the cipher suite each connection
/// negotiated.
pub struct HttpsAuthority {
    dir: tempfile::TempDir,
    port: u16,
    suites: Arc<Mutex<Vec<String>>>,
}

impl HttpsAuthority {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        make_certificates(dir.path());
        let certs = CertificateDer::pem_file_iter(dir.path().join("server.crt"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.path().join("server.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let suites = Arc::new(Mutex::new(Vec::new()));
        let seen = suites.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(tcp) = stream else { return };
                let config = config.clone();
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    if !read_request(&mut tls) {
                        return; // the client refused the certificate
                    }
                    if let Some(suite) = tls.conn.negotiated_cipher_suite() {
                        seen.lock().unwrap().push(format!("{:?}", suite.suite()));
                    }
                    let body = r#"{"access_token":"at-over-tls","expires_in":60}"#;
                    let _ = write!(
                        tls,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        HttpsAuthority { dir, port, suites }
    }

    pub fn token_url(&self) -> String {
        format!("https://127.0.0.1:{}/token", self.port)
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("ca.crt")).unwrap()
    }

    /// The cipher suites negotiated so far, one per answered request.
    pub fn suites(&self) -> Vec<String> {
        self.suites.lock().unwrap().clone()
    }

    fn fetch(&self, transport: UreqTransport) -> Result<String, FetchError> {
        let source = ClientCredentials::builder(self.token_url(), "app", "s3cret-tls")
            .transport(transport.timeout(Duration::from_secs(10)))
            .build()
            .unwrap();
        let answer = source.fetch(&FetchRequest::first())?;
        Ok(answer.access_token.expose_secret().to_owned())
    }

    /// A token over https through `UreqTransport` trusting this CA.
    pub fn fetch_with_its_ca(&self) -> String {
        let transport = UreqTransport::new()
            .root_certificates_pem(&self.ca_pem())
            .unwrap();
        self.fetch(transport).expect("a token over https")
    }

    /// Through the platform verifier (the operating system's trust store,
    /// which does not hold the test CA): refused, as an error.
    pub fn fetch_with_the_platform_verifier(&self) -> Result<String, FetchError> {
        self.fetch(UreqTransport::new().platform_verifier())
    }
}

/// Reads one request (head and Content-Length body); false if the
/// connection ended first.
fn read_request(stream: &mut impl Read) -> bool {
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return false;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).is_ok()
}

fn token(access: &str) -> Token {
    let now = SystemClock.now();
    Token::new(
        AccessToken::new(access),
        now,
        now + Duration::from_secs(30),
        now + Duration::from_secs(60),
    )
}

/// A round trip through a PostgreSQL cache over TLS (a server with a
/// certificate of the test's CA).
pub fn postgres_round_trip() {
    let server = PostgresServer::start_tls();
    let cache = PostgresCache::new(&server.conn_str(), "tls-provider")
        .unwrap()
        .with_root_certificate(&server.ca_pem())
        .unwrap();
    let t = token("at-postgres-tls");
    cache.store(&t).unwrap();
    assert_eq!(cache.load().unwrap(), Some(t));
}

/// Round trips through `rediss://` caches, blocking and async (smol), to a
/// TLS-only redis-server.
pub fn redis_round_trips() {
    let server = RedisServer::start_tls();
    let ca = server.ca_pem();
    let blocking = RedisCache::with_root_certificate(&server.url(), "tls:provider", &ca)
        .unwrap()
        .with_connect_timeout(Duration::from_secs(5));
    let t = token("at-redis-tls");
    blocking.store(&t).unwrap();
    assert_eq!(blocking.load().unwrap(), Some(t.clone()));
    let cache = AsyncRedisCache::builder(&server.url(), "tls:provider")
        .root_certificate(&ca)
        .connect_timeout(Duration::from_secs(5))
        .build_async()
        .unwrap();
    assert_eq!(smol::block_on(cache.load()).unwrap(), Some(t));
}

/// Builds every kind of `rediss://` cache (no connection is made).
pub fn rediss_builds() -> Vec<Result<(), CacheError>> {
    let url = "rediss://127.0.0.1:6380/";
    let nodes = ["rediss://127.0.0.1:7000/"];
    vec![
        RedisCache::new(url, "k").map(drop),
        RedisCache::cluster(nodes, "k").build().map(drop),
        RedisCache::sentinel(["rediss://127.0.0.1:26379/"], "svc", "k")
            .build()
            .map(drop),
        AsyncRedisCache::new(url, "k").map(drop),
        AsyncRedisCache::cluster(nodes, "k").build_async().map(drop),
    ]
}
