//! [`UreqTransport`]: the blocking transport over ureq 3 and rustls
//! (feature `ureq-transport`, part of `oauth2`).

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use ureq::tls::{ClientCert, PrivateKey, RootCerts, TlsConfig};
use zeroize::Zeroizing;

use freshtoken_core::oauth2::{redacted_url, uri_has_loopback_host, HttpRequest, HttpResponse};
use freshtoken_core::FetchError;

use super::super::signing::KeyError;
#[cfg(doc)]
use super::super::url::check_token_url;
use super::{checked_uri, header_pairs, request_timeout, HttpTransport};

/// The default [`HttpTransport`]: [ureq] 3 with rustls and the Mozilla root
/// certificates (webpki-roots), no redirects, connect and overall timeouts,
/// the body read up to the cap.
///
/// It also refuses to send to a URL that [`check_token_url`] rejects (plain
/// http beyond loopback), whoever built the request: the URL is parsed once
/// into the `http::Uri` that is both checked and connected to. It never
/// sends a loopback request through a proxy, and asks for the connection
/// to be closed after each request: token requests are minutes apart, so a
/// pooled connection would only go stale in between.
///
/// What corporate networks need, as builder options:
///
/// * **Proxy.** By default the `ALL_PROXY`, `HTTPS_PROXY` and `HTTP_PROXY`
///   variables (and `NO_PROXY`) are honoured, as ureq does.
///   [`proxy`](Self::proxy) names one explicitly (`http://`, `https://`
///   CONNECT proxies, credentials in the URL percent-encoded), and
///   [`no_proxy`](Self::no_proxy) ignores the environment.
/// * **Private CAs.** [`root_certificates_pem`](Self::root_certificates_pem)
///   trusts the given CA certificates instead of the Mozilla roots.
/// * **The operating system's trust store** (a CA pushed by group policy or
///   MDM, TLS-inspecting proxies): `platform_verifier`, with the
///   `platform-verifier` feature, verifies with rustls-platform-verifier
///   (the platform's own verifier on Windows and macOS, the system's CA
///   files on Linux).
///
/// ```
/// use freshtoken::oauth2::UreqTransport;
/// use std::time::Duration;
///
/// let transport = UreqTransport::new()
///     .connect_timeout(Duration::from_secs(3))
///     .timeout(Duration::from_secs(10))
///     .proxy("http://proxy.corp.example:3128")?;
/// # Ok::<_, freshtoken::oauth2::ProxyError>(())
/// ```
///
/// [ureq]: https://docs.rs/ureq
#[derive(Clone)]
pub struct UreqTransport {
    agent: ureq::Agent,
    connect_timeout: Duration,
    timeout: Duration,
    client_cert: Option<ClientCert>,
    roots: Option<RootCerts>,
    proxy: ProxySetting,
    /// The client certificate's `x5t#S256`, for `Debug` and for checking a
    /// certificate-bound token's `cnf`.
    cert_thumbprint: Option<String>,
}

impl fmt::Debug for UreqTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client key never shows; the certificate by its thumbprint.
        f.debug_struct("UreqTransport")
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("client_certificate", &self.cert_thumbprint)
            .field("roots", &roots_name(self.roots.as_ref()))
            .field("proxy", &self.proxy)
            .finish()
    }
}

impl Default for UreqTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl UreqTransport {
    /// Connect timeout 10 s, overall timeout 30 s (shorter than the
    /// machine's default lease TTL, so a lease holder never loses its lease
    /// mid-request).
    pub fn new() -> Self {
        UreqTransport {
            agent: ureq::Agent::new_with_defaults(),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            client_cert: None,
            roots: None,
            proxy: ProxySetting::FromEnvironment,
            cert_thumbprint: None,
        }
        .rebuilt()
    }

    /// Sets the timeout for establishing the connection (TCP and TLS).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self.rebuilt()
    }

    /// Sets the timeout for the whole request, from connecting to the last
    /// byte of the answer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self.rebuilt()
    }

    /// Presents a client certificate in the TLS handshake: mutual TLS for
    /// RFC 8705 `tls_client_auth` (a certificate from a CA the authority
    /// trusts) and `self_signed_tls_client_auth` (a registered self-signed
    /// certificate). `chain_pem` holds the certificate, then any
    /// intermediates; `key_pem` its private key (PKCS#8, PKCS#1 or SEC1).
    /// Set the source's method with
    /// [`ClientAuth::TlsClientAuth`](freshtoken_core::oauth2::ClientAuth::TlsClientAuth)
    /// so that only `client_id` goes in the body. Tokens the authority
    /// binds to the certificate (`cnf.x5t#S256`) come back unchanged;
    /// [`certificate_thumbprint`](Self::certificate_thumbprint) is what
    /// the resource server will compare them with.
    ///
    /// ureq and rustls keep the key (its DER and rustls' parsed signing
    /// key) for the transport's life, as a TLS client must; neither wipes
    /// it when the transport is dropped. The PEM read from files is wiped.
    pub fn client_certificate_pem(
        mut self,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, KeyError> {
        let chain = ureq::tls::parse_pem(chain_pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(_) => Some(Err(KeyError::Certificate)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let first = chain.first().ok_or(KeyError::Certificate)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, first.der());
        let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
        let key = PrivateKey::from_pem(key_pem)
            .map_err(|_| KeyError::Pem("no private key for the client certificate"))?;
        self.client_cert = Some(ClientCert::new_with_certs(&chain, key));
        self.cert_thumbprint = Some(thumbprint);
        Ok(self.rebuilt())
    }

    /// Reads the client certificate chain and key from PEM files (see
    /// [`client_certificate_pem`](Self::client_certificate_pem)).
    pub fn client_certificate_files(
        self,
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, KeyError> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map(Zeroizing::new)
                .map_err(|e| KeyError::Io {
                    path: p.display().to_string(),
                    kind: e.kind(),
                })
        };
        let chain = read(chain.as_ref())?;
        let key = read(key.as_ref())?;
        self.client_certificate_pem(&chain, &key)
    }

    /// Trusts these CA certificates (PEM) instead of the Mozilla roots: for
    /// an authority with a private CA. (The last of this and
    /// `platform_verifier` wins.)
    ///
    /// ```
    /// use freshtoken::oauth2::{KeyError, UreqTransport};
    /// assert!(matches!(UreqTransport::new().root_certificates_pem(b"no PEM here"), Err(KeyError::Certificate)));
    /// ```
    pub fn root_certificates_pem(mut self, pem: &[u8]) -> Result<Self, KeyError> {
        let certs = ureq::tls::parse_pem(pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(_) => Some(Err(KeyError::Certificate)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if certs.is_empty() {
            return Err(KeyError::Certificate);
        }
        self.roots = Some(RootCerts::new_with_certs(&certs));
        Ok(self.rebuilt())
    }

    /// Reads [`root_certificates_pem`](Self::root_certificates_pem) from a
    /// PEM file.
    pub fn root_certificates_file(self, path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| KeyError::Io {
            path: path.display().to_string(),
            kind: e.kind(),
        })?;
        self.root_certificates_pem(&pem)
    }

    /// Verifies the authority's certificate with the operating system's
    /// trust store (rustls-platform-verifier) instead of the Mozilla roots:
    /// what a corporate machine with a CA installed by policy needs.
    ///
    /// ```
    /// let transport = freshtoken::oauth2::UreqTransport::new().platform_verifier();
    /// assert!(format!("{transport:?}").contains("platform"));
    /// ```
    #[cfg(feature = "platform-verifier")]
    pub fn platform_verifier(mut self) -> Self {
        self.roots = Some(RootCerts::PlatformVerifier);
        self.rebuilt()
    }

    /// Sends every request (except to loopback hosts) through this proxy,
    /// whatever the environment says. `url` is `http://host:port` or
    /// `https://host:port` (a CONNECT proxy; ureq also reads `socks5://`
    /// when built with its `socks-proxy` feature), with optional
    /// `user:password@` (percent-encoded), which `Debug` never shows.
    ///
    /// ```
    /// use freshtoken::oauth2::UreqTransport;
    ///
    /// let t = UreqTransport::new().proxy("http://user:s3cret@proxy.corp.example:3128")?;
    /// assert!(!format!("{t:?}").contains("s3cret"));
    /// assert!(UreqTransport::new().proxy("ftp://nope").is_err());
    /// # Ok::<_, freshtoken::oauth2::ProxyError>(())
    /// ```
    pub fn proxy(mut self, url: &str) -> Result<Self, ProxyError> {
        let proxy = ureq::Proxy::new(url).map_err(|_| ProxyError {
            redacted: redacted_url(url),
        })?;
        self.proxy = ProxySetting::Explicit(proxy, redacted_url(url));
        Ok(self.rebuilt())
    }

    /// Ignores `HTTPS_PROXY` and the other proxy variables: connects
    /// directly.
    pub fn no_proxy(mut self) -> Self {
        self.proxy = ProxySetting::Direct;
        self.rebuilt()
    }

    /// The client certificate's SHA-256 thumbprint (base64url), as in a
    /// certificate-bound token's `cnf.x5t#S256`.
    pub fn certificate_thumbprint(&self) -> Option<&str> {
        self.cert_thumbprint.as_deref()
    }

    fn rebuilt(mut self) -> Self {
        let mut tls = TlsConfig::builder().client_cert(self.client_cert.clone());
        if let Some(roots) = &self.roots {
            tls = tls.root_certs(roots.clone());
        }
        let config = ureq::Agent::config_builder()
            // Every status is an answer for the OAuth2 parser to classify.
            .http_status_as_error(false)
            // A redirect of a POST carrying a client secret is not followed;
            // the parser reports it.
            .max_redirects(0)
            .timeout_connect(Some(self.connect_timeout))
            .timeout_global(Some(self.timeout))
            .user_agent(concat!("freshtoken/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .proxy(self.proxy.resolve())
            .build();
        self.agent = config.new_agent();
        self
    }
}

impl HttpTransport for UreqTransport {
    fn send(&self, request: &HttpRequest, max_body: usize) -> Result<HttpResponse, FetchError> {
        // The URI checked is the URI connected to.
        let uri = checked_uri(request)?;
        let loopback = uri_has_loopback_host(&uri);
        let response = if request.method() == "GET" {
            let mut builder = self.agent.get(uri).header("Connection", "close");
            if loopback {
                builder = builder.config().proxy(None).build();
            }
            if let Some(timeout) = request_timeout(request, self.timeout) {
                builder = builder.config().timeout_global(Some(timeout)).build();
            }
            for (name, value) in request.headers() {
                builder = builder.header(name, value);
            }
            builder.call()
        } else {
            let mut builder = self.agent.post(uri).header("Connection", "close");
            if loopback {
                // An HTTP(S)_PROXY from the environment cannot reach this
                // machine's loopback.
                builder = builder.config().proxy(None).build();
            }
            if let Some(timeout) = request_timeout(request, self.timeout) {
                builder = builder.config().timeout_global(Some(timeout)).build();
            }
            for (name, value) in request.headers() {
                builder = builder.header(name, value);
            }
            builder.send(request.body())
        }
        .map_err(transport_error)?;
        let (parts, body) = response.into_parts();
        let headers = header_pairs(&parts.headers);
        let mut bytes = Vec::new();
        let limit = u64::try_from(max_body)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        body.into_reader()
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                FetchError::transient(format!("reading the token endpoint's answer failed: {e}"))
                    .with_status(parts.status.as_u16())
                    .with_source(e)
            })?;
        Ok(HttpResponse::new(parts.status.as_u16(), headers, bytes))
    }
}

/// Where requests go: as the environment says, directly, or through a
/// named proxy (kept with its redacted URL for `Debug`).
#[derive(Clone)]
enum ProxySetting {
    FromEnvironment,
    Direct,
    Explicit(ureq::Proxy, String),
}

impl ProxySetting {
    fn resolve(&self) -> Option<ureq::Proxy> {
        match self {
            ProxySetting::FromEnvironment => ureq::Proxy::try_from_env(),
            ProxySetting::Direct => None,
            ProxySetting::Explicit(proxy, _) => Some(proxy.clone()),
        }
    }
}

impl fmt::Debug for ProxySetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxySetting::FromEnvironment => f.write_str("from the environment"),
            ProxySetting::Direct => f.write_str("none"),
            ProxySetting::Explicit(_, url) => f.write_str(url),
        }
    }
}

fn roots_name(roots: Option<&RootCerts>) -> &'static str {
    match roots {
        None | Some(RootCerts::WebPki) => "Mozilla (webpki-roots)",
        Some(RootCerts::PlatformVerifier) => "the platform verifier",
        Some(_) => "custom",
    }
}

/// A proxy URL that cannot be used. Its `Display` shows the URL with any
/// password redacted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid proxy URL {redacted} (expected http://host:port or https://host:port)")]
pub struct ProxyError {
    redacted: String,
}

/// A ureq failure as a fetch error. ureq's errors describe the connection
/// (address, TLS, timeout), never the request's headers or body, but the
/// ones that could quote a URL or a header are reworded anyway.
fn transport_error(e: ureq::Error) -> FetchError {
    use ureq::Error as E;
    match e {
        E::BadUri(_) => FetchError::permanent("the token endpoint URL is not a valid URI"),
        E::Http(_) => {
            FetchError::permanent("the token request could not be built (invalid header)")
        }
        E::RequireHttpsOnly(_) => FetchError::permanent("the token endpoint must use https"),
        E::Timeout(t) => FetchError::transient(format!("the token request timed out ({t})")),
        E::HostNotFound => FetchError::transient("the token endpoint's host was not found"),
        E::ConnectionFailed => FetchError::transient("could not connect to the token endpoint"),
        // The causes whose text the message already shows are kept as its
        // source too.
        E::Io(io) => {
            FetchError::transient(format!("network error talking to the token endpoint: {io}"))
                .with_source(io)
        }
        E::Tls(msg) => FetchError::transient(format!("TLS error: {msg}")),
        E::Rustls(err) => FetchError::transient(format!("TLS error: {err}")).with_source(err),
        E::Protocol(err) => FetchError::transient(format!("HTTP protocol error: {err}")),
        E::LargeResponseHeader(_, limit) => {
            FetchError::transient(format!("the answer's headers exceed {limit} bytes"))
        }
        other => {
            tracing::debug!(error = %other, "token request failed in the HTTP client");
            FetchError::transient("the HTTP client failed to send the token request")
        }
    }
}
