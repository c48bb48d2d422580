//! Inputs from the network and the cache, end to end, against real
//! servers on loopback:
//!
//! * an authority whose `token_type` carries a CR/LF (header injection) is
//!   refused by the OAuth2 source, and a source that returns one anyway is
//!   refused by the driver; a cache file holding one is treated as corrupt;
//! * `Debug` of requests and sources never shows a URL's password or its
//!   query values;
//! * `UreqTransport` through an explicit CONNECT proxy (a small one run
//!   here, which records what it is asked for) to an https authority with
//!   a private CA (a rustls server run here, certificates made with the
//!   `openssl` command), and the same without the CA and with the platform
//!   verifier (the system's store), which must both fail.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshtoken::cache::{FileCache, TokenCache};
use freshtoken::driver::Builder;
use freshtoken::oauth2::{ClientCredentials, UreqTransport};
use freshtoken::source::TokenSource;
use freshtoken::source::{FetchRequest, TokenResponse};
use freshtoken::{AccessToken, FetchError, FetchErrorKind};

/// An HTTP server on loopback that answers every request with `body`
/// (status 200, JSON) and counts the requests.
fn answering(body: &'static str) -> (String, Arc<Mutex<u32>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let count = Arc::new(Mutex::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            if read_request(&mut stream).is_none() {
                continue;
            }
            *seen.lock().unwrap() += 1;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, count)
}

/// Reads one request (head and a Content-Length body); returns its first line.
fn read_request(stream: &mut impl Read) -> Option<String> {
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(first.trim_end().to_owned())
}

const INJECTION: &str = r#"{"access_token":"at-must-not-leak-1","token_type":"Bearer\r\nX-Injected: 1","expires_in":60}"#;

#[test]
fn a_token_type_with_a_line_break_is_refused_by_the_source() {
    let (url, count) = answering(INJECTION);
    let source = ClientCredentials::builder(url, "app", "s3cret-9")
        .build()
        .unwrap();
    let e = source.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(*count.lock().unwrap(), 1);
    assert_eq!(e.kind(), FetchErrorKind::Transient);
    assert!(e.to_string().contains("token_type"), "{e}");
    assert!(!e.to_string().contains("at-must-not-leak-1"), "{e}");
    assert!(!e.to_string().contains(['\r', '\n']), "{e}");
}

/// A custom source that returns what an authority sent, unchecked.
struct Unchecked;

impl TokenSource for Unchecked {
    fn fetch(&self, _request: &FetchRequest) -> Result<TokenResponse, FetchError> {
        Ok(TokenResponse::new(AccessToken::new("at-must-not-leak-2"))
            .with_token_type("Bearer\r\nX-Injected: 1")
            .with_expires_in(Some(60)))
    }
}

#[test]
fn a_token_type_with_a_line_break_is_refused_by_the_driver() {
    let (tokens, driver) = Builder::new().spawn_thread(Unchecked).unwrap();
    let error = loop {
        if let Some(e) = tokens.status().last_error().cloned() {
            break e;
        }
        let _ = tokens.wait_changed(Duration::from_secs(5));
    };
    assert!(error.to_string().contains("token_type"), "{error}");
    assert!(tokens.valid_token().is_err());
    driver.shutdown_blocking();
}

#[test]
fn a_cache_file_with_a_line_break_in_token_type_is_corrupt() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    let far = 4_000_000_000_000u64; // ms, in 2096
                                    // The file cache wants its file private (0600), as it writes it.
    let write = |contents: String| {
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    write(format!(
        r#"{{"version":1,"token_type":"Bearer\r\nX-Injected: 1","access_token":"at-3",
               "issued_at_ms":1,"stale_at_ms":{far},"expires_at_ms":{far}}}"#
    ));
    let cache = FileCache::new(&path);
    // Not served: a miss, and the file is set aside (quarantined).
    let loaded = cache.load();
    assert!(matches!(loaded, Ok(None)), "{loaded:?}");
    assert!(!path.exists() || std::fs::read(&path).unwrap().is_empty());
    // The same record with a plain token type is read.
    write(format!(
        r#"{{"version":1,"token_type":"Bearer","access_token":"at-3",
               "issued_at_ms":1,"stale_at_ms":{far},"expires_at_ms":{far}}}"#
    ));
    assert_eq!(
        cache.load().unwrap().unwrap().authorization_header(),
        "Bearer at-3"
    );
}

#[test]
fn debug_never_shows_url_credentials_or_query_values() {
    let url = "https://app:url-pass-7@auth.example/token?code=code-value-8&state=s1";
    let source = ClientCredentials::builder(url, "app", "s3cret-9")
        .build()
        .unwrap();
    let request = source.request();
    let http = request.build(&FetchRequest::first()).unwrap();
    for shown in [
        format!("{source:?}"),
        format!("{request:?}"),
        format!("{http:?}"),
    ] {
        for secret in ["url-pass-7", "code-value-8", "s3cret-9"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("auth.example/token?code=<redacted>"),
            "{shown}"
        );
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `openssl` (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const HOST: &str = "auth.freshtoken.test";

/// A CA (ca.pem) and a server certificate for [`HOST`] it issued.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=inputs test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca-key.pem", "-out", "ca.pem"]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-new", "-subj", "/CN=auth.freshtoken.test"];
    csr.extend(ec);
    csr.extend(["-keyout", "server-key.pem", "-out", "server.csr"]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("server.ext"),
        format!("subjectAltName=DNS:{HOST}\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.pem",
            "-extfile",
            "server.ext",
        ],
    );
}

/// An https token endpoint on loopback (rustls), answering every request
/// with a token. Returns its port.
fn tls_authority(dir: &Path) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server-key.pem")).unwrap();
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
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(tcp) = stream else { return };
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                if read_request(&mut tls).is_none() {
                    return; // the client refused the certificate
                }
                let body = r#"{"access_token":"at-via-proxy","expires_in":60}"#;
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
    port
}

/// A CONNECT proxy on loopback that tunnels every CONNECT to
/// `127.0.0.1:target` and records the request lines it got.
fn connect_proxy(target: u16) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://proxy-user:proxy-pass-5@{}",
        listener.local_addr().unwrap()
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut client) = stream else { return };
            let log = log.clone();
            std::thread::spawn(move || {
                // The head ends with an empty line; CONNECT has no body.
                let mut head = Vec::new();
                let mut byte = [0u8];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read_exact(&mut byte).is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                log.lock().unwrap().push(head.clone());
                if !head.starts_with("CONNECT ") {
                    let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n");
                    return;
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
                    return;
                };
                let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut u2);
                    let _ = u2.shutdown(std::net::Shutdown::Write);
                });
                let (mut u, mut c) = (upstream, client);
                let _ = std::io::copy(&mut u, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
            });
        }
    });
    (url, seen)
}

#[test]
fn through_an_explicit_proxy_to_an_authority_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let authority = tls_authority(dir.path());
    let (proxy_url, seen) = connect_proxy(authority);
    let url = format!("https://{HOST}/token");

    // With the private CA: a token, and the proxy was asked for the host
    // (which does not resolve here: only the proxy can reach it).
    let transport = UreqTransport::new()
        .timeout(Duration::from_secs(10))
        .proxy(&proxy_url)
        .unwrap()
        .root_certificates_file(dir.path().join("ca.pem"))
        .unwrap();
    let shown = format!("{transport:?}");
    assert!(!shown.contains("proxy-pass-5"), "{shown}");
    assert!(shown.contains("custom"), "{shown}");
    let source = ClientCredentials::builder(&url, "app", "s3cret-9")
        .transport(transport)
        .build()
        .unwrap();
    let answer = source.fetch(&FetchRequest::first()).unwrap();
    assert_eq!(answer.access_token.expose_secret(), "at-via-proxy");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].starts_with(&format!("CONNECT {HOST}:443 HTTP/1.1\r\n")),
            "{seen:?}"
        );
        // The proxy credentials are sent to the proxy, as Basic.
        assert!(
            seen[0]
                .to_ascii_lowercase()
                .contains("proxy-authorization: basic "),
            "{seen:?}"
        );
    }

    // Without it (the Mozilla roots): the certificate is refused.
    let transport = UreqTransport::new()
        .timeout(Duration::from_secs(10))
        .proxy(&proxy_url)
        .unwrap();
    let e = ClientCredentials::builder(&url, "app", "s3cret-9")
        .transport(transport)
        .build()
        .unwrap()
        .fetch(&FetchRequest::first())
        .unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Transient);
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    // The I/O error carrying rustls' is kept as the cause, for reports that
    // walk the chain.
    let cause = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    assert!(
        matches!(cause, Some(rustls::Error::InvalidCertificate(_))),
        "{e}: {cause:?}"
    );
    assert_eq!(seen.lock().unwrap().len(), 2);

    // With the platform verifier (the system's trust store, which does not
    // hold this test CA): refused too, as a TLS error, not a panic.
    let transport = UreqTransport::new()
        .timeout(Duration::from_secs(10))
        .proxy(&proxy_url)
        .unwrap()
        .platform_verifier();
    assert!(format!("{transport:?}").contains("platform verifier"));
    let e = ClientCredentials::builder(&url, "app", "s3cret-9")
        .transport(transport)
        .build()
        .unwrap()
        .fetch(&FetchRequest::first())
        .unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Transient);
    assert!(e.to_string().contains("certificate"), "{e}");
    assert_eq!(seen.lock().unwrap().len(), 3);

    // Directly (no proxy): the name does not resolve.
    let e = ClientCredentials::builder(&url, "app", "s3cret-9")
        .transport(
            UreqTransport::new()
                .no_proxy()
                .timeout(Duration::from_secs(10)),
        )
        .build()
        .unwrap()
        .fetch(&FetchRequest::first())
        .unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Transient, "{e}");
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[test]
fn an_invalid_proxy_url_is_a_typed_error_without_the_password() {
    let e = UreqTransport::new()
        .proxy("ftp://user:pw-6@proxy.example:21")
        .unwrap_err();
    assert!(!e.to_string().contains("pw-6"), "{e}");
    assert!(e.to_string().contains("proxy.example"), "{e}");
}
