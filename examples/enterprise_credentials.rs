//! Tokens with enterprise credentials: each client authentication method
//! and grant of `freshtoken::oauth2`, with the token endpoint discovered
//! from the issuer, kept fresh by the blocking driver for a few seconds.
//! It prints the discovered endpoint, then token ids and expiries (never a
//! token, key or assertion).
//!
//! ```text
//! enterprise_credentials --issuer URL --client-id ID --method METHOD [options]
//!
//! METHOD and what it needs:
//!   private_key_jwt    --key PEM-or-JWK-FILE [--alg RS256|PS256|ES256] [--audience issuer]
//!   client_secret_jwt  the secret in FRESHTOKEN_CLIENT_SECRET (32 bytes or more)
//!   assertion_file     --assertion-file PATH (a federated token another system rotates)
//!   mtls               --cert PEM --cert-key PEM [--ca PEM]  (tls_client_auth; without a
//!                      certificate, to see the authority refuse)
//!   jwt_bearer         --key PEM --assertion-issuer ISS      (RFC 7523 2.1)
//!   token_exchange     --subject-client-id ID, its secret in FRESHTOKEN_SUBJECT_SECRET,
//!                      --exchange-audience AUD               (RFC 8693)
//! Common: --scope S, --resource URL, --seconds N (default 3), --ca PEM (a private CA),
//!         --proxy URL, --first-token-timeout N (default 10: how long to wait for the
//!         first token); `--help` lists them all
//! RUST_LOG (`RUST_LOG=freshtoken=debug`) shows the driver's log on stderr.
//! ```
//!
//! Exit codes: 0 done, 1 the authority, key or credential is wrong (with a
//! message saying which), 2 a bad command line. CI runs every method
//! against oidc-provider (`.ci/examples-enterprise`).

use std::process::exit;
use std::time::{Duration, Instant};

use freshtoken::driver::{Builder, DriverHandle};
use freshtoken::oauth2::JwsAlgorithm;
use freshtoken::oauth2::{
    Audience, ClientAuth, ClientCredentials, Discovery, JwtBearer, SigningKey, SourceBuilder,
    TokenExchange, UreqTransport,
};
use freshtoken::source::TokenSource;
use freshtoken::TokenHandle;

#[path = "support/mod.rs"]
mod support;

fn usage(why: &str) -> ! {
    eprintln!("enterprise_credentials: {why} (see the file's docs for the options)");
    exit(2)
}

fn fail(why: &str) -> ! {
    eprintln!("enterprise_credentials: {why}");
    exit(1)
}

/// Tokens with enterprise credentials: each client authentication method
/// and grant, the token endpoint discovered from the issuer.
#[derive(clap::Parser)]
#[command(about, long_about = None)]
struct Args {
    /// The issuer whose metadata names the token endpoint
    #[arg(long, value_name = "URL")]
    issuer: String,
    /// The client id
    #[arg(long, value_name = "ID")]
    client_id: String,
    /// The client authentication method or grant
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(METHODS))]
    method: String,
    /// private_key_jwt, jwt_bearer: the signing key (PEM or JWK file)
    #[arg(long, value_name = "FILE")]
    key: Option<String>,
    /// The key's algorithm (for a PEM key)
    #[arg(long, default_value = "RS256", value_name = "RS256|PS256|ES256")]
    alg: String,
    /// private_key_jwt: `issuer` puts the issuer in the assertion's aud
    /// instead of the token endpoint
    #[arg(long, value_name = "issuer")]
    audience: Option<String>,
    /// assertion_file: the federated token another system rotates
    #[arg(long, value_name = "PATH")]
    assertion_file: Option<String>,
    /// mtls: the client certificate (PEM)
    #[arg(long, value_name = "PEM")]
    cert: Option<String>,
    /// mtls: the client certificate's key (PEM)
    #[arg(long, value_name = "PEM")]
    cert_key: Option<String>,
    /// jwt_bearer: the assertion's iss
    #[arg(long, value_name = "ISS")]
    assertion_issuer: Option<String>,
    /// token_exchange: the subject's client id (its secret in FRESHTOKEN_SUBJECT_SECRET)
    #[arg(long, value_name = "ID")]
    subject_client_id: Option<String>,
    /// token_exchange: the audience asked for
    #[arg(long, value_name = "AUD")]
    exchange_audience: Option<String>,
    /// The scope parameter
    #[arg(long)]
    scope: Option<String>,
    /// An RFC 8707 resource indicator
    #[arg(long, value_name = "URL")]
    resource: Option<String>,
    /// Trust this CA (PEM) instead of the Mozilla roots
    #[arg(long, value_name = "PEM")]
    ca: Option<String>,
    /// Send every request through this proxy (http://host:port)
    #[arg(long, value_name = "URL")]
    proxy: Option<String>,
    /// How long to keep the token fresh, in seconds
    #[arg(long, default_value_t = 3, value_name = "N")]
    seconds: u64,
    /// How long to wait for the first token, in seconds
    #[arg(long, default_value_t = 10, value_name = "N")]
    first_token_timeout: u64,
}

const METHODS: [&str; 6] = [
    "private_key_jwt",
    "client_secret_jwt",
    "assertion_file",
    "mtls",
    "jwt_bearer",
    "token_exchange",
];

impl Args {
    fn parse() -> Args {
        support::cli()
    }

    fn get(&self, name: &str) -> Option<&str> {
        let value = match name {
            "method" => return Some(&self.method),
            "alg" => return Some(&self.alg),
            "key" => &self.key,
            "audience" => &self.audience,
            "assertion-file" => &self.assertion_file,
            "cert" => &self.cert,
            "cert-key" => &self.cert_key,
            "assertion-issuer" => &self.assertion_issuer,
            "subject-client-id" => &self.subject_client_id,
            "exchange-audience" => &self.exchange_audience,
            "scope" => &self.scope,
            "resource" => &self.resource,
            "ca" => &self.ca,
            "proxy" => &self.proxy,
            _ => &None,
        };
        value.as_deref()
    }

    fn need(&self, name: &str) -> &str {
        self.get(name).unwrap_or_else(|| {
            usage(&format!(
                "--{name} is required with --method {}",
                self.method
            ))
        })
    }
}

/// A wall-clock instant in RFC 3339 (UTC, to the second).
fn rfc3339(t: freshtoken::Timestamp) -> String {
    let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(t.as_millis());
    humantime::format_rfc3339_seconds(t).to_string()
}

fn secret(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| fail(&format!("set the secret in {var}")))
}

fn key(args: &Args) -> SigningKey {
    let path = args.need("key");
    let text = std::fs::read(path).unwrap_or_else(|e| fail(&format!("cannot read {path}: {e}")));
    let loaded = if text.trim_ascii_start().starts_with(b"{") {
        SigningKey::from_jwk(&String::from_utf8_lossy(&text))
    } else {
        let alg = args.get("alg").unwrap_or("RS256");
        let alg =
            JwsAlgorithm::from_name(alg).unwrap_or_else(|| usage(&format!("unknown --alg {alg}")));
        SigningKey::from_pem(alg, &text)
    };
    loaded.unwrap_or_else(|e| fail(&format!("the key in {path}: {e}")))
}

fn transport(args: &Args) -> UreqTransport {
    let mut t = UreqTransport::new();
    if let Some(proxy) = args.get("proxy") {
        t = t.proxy(proxy).unwrap_or_else(|e| usage(&e.to_string()));
    }
    if let Some(ca) = args.get("ca") {
        let pem = std::fs::read(ca).unwrap_or_else(|e| fail(&format!("cannot read {ca}: {e}")));
        t = t
            .root_certificates_pem(&pem)
            .unwrap_or_else(|e| fail(&format!("{ca}: {e}")));
    }
    if args.get("method") == Some("mtls") {
        match (args.get("cert"), args.get("cert-key")) {
            (Some(cert), Some(key)) => {
                t = t
                    .client_certificate_files(cert, key)
                    .unwrap_or_else(|e| fail(&format!("the client certificate: {e}")));
            }
            // Shows what the authority says without one.
            _ => {
                eprintln!("enterprise_credentials: no --cert and --cert-key: no client certificate")
            }
        }
    }
    t
}

/// Scope and resource, for every builder.
fn common<S>(args: &Args, mut b: SourceBuilder<S>) -> SourceBuilder<S> {
    if let Some(scope) = args.get("scope") {
        b = b.scope(scope);
    }
    if let Some(resource) = args.get("resource") {
        b = b.resource(resource);
    }
    b.transport(transport(args))
}

/// Runs `source` on the blocking driver for `seconds`, printing what it
/// gets; exits 1 when no first token comes within `first_timeout` seconds.
fn run(source: impl TokenSource, seconds: u64, first_timeout: u64, label: &str) {
    let (tokens, driver) = Builder::new()
        .spawn_thread(source)
        .unwrap_or_else(|e| fail(&format!("cannot start the driver: {e}")));
    let first = tokens
        .wait_ready(Duration::from_secs(first_timeout))
        .unwrap_or_else(|e| fail(&format!("no token with {label}: {e}")));
    println!(
        "{label}: token {} expires at {}",
        first.id(),
        rfc3339(first.expires_at())
    );
    drop(first);
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut seen = 1;
    let mut last = tokens.token().map(|t| t.id());
    while Instant::now() < until {
        let _ = tokens.wait_changed(until.saturating_duration_since(Instant::now()));
        let now = tokens.token().map(|t| t.id());
        if now != last {
            seen += 1;
            last = now;
        }
    }
    match tokens.valid_token() {
        Ok(t) => println!(
            "{label}: {seen} token(s) in {seconds} s, the current one is {}",
            t.id()
        ),
        Err(e) => fail(&format!("{label}: {e}")),
    }
    driver.shutdown_blocking();
}

fn subject_handle(args: &Args, discovery: &Discovery) -> (TokenHandle, DriverHandle) {
    let subject = common(
        args,
        ClientCredentials::from_issuer(discovery.clone(), args.need("subject-client-id"))
            .client_secret(secret("FRESHTOKEN_SUBJECT_SECRET"))
            .client_auth(ClientAuth::Post),
    )
    .build()
    .unwrap_or_else(|e| fail(&e.to_string()));
    Builder::new()
        .spawn_thread(subject)
        .unwrap_or_else(|e| fail(&format!("cannot start the subject's driver: {e}")))
}

fn main() {
    let args = Args::parse();
    let issuer = args.issuer.as_str();
    let client_id = args.client_id.as_str();
    let method = args.method.as_str();
    let (seconds, first_timeout) = (args.seconds, args.first_token_timeout);

    let discovery = Discovery::with_transport(issuer, transport(&args))
        .unwrap_or_else(|e| fail(&e.to_string()));
    let metadata = discovery
        .metadata()
        .unwrap_or_else(|e| fail(&format!("discovery: {e}")));
    println!(
        "issuer {} has its token endpoint at {}",
        metadata.issuer(),
        metadata.token_endpoint()
    );
    let built = |b: SourceBuilder<ClientCredentials>| {
        common(&args, b)
            .build()
            .unwrap_or_else(|e| fail(&e.to_string()))
    };
    let from_issuer = || ClientCredentials::from_issuer(discovery.clone(), client_id);
    match method {
        "private_key_jwt" => {
            let mut b = from_issuer().private_key_jwt(key(&args));
            if args.get("audience") == Some("issuer") {
                b = b.assertion_audience(Audience::Issuer);
            }
            run(built(b), seconds, first_timeout, method)
        }
        "client_secret_jwt" => run(
            built(
                from_issuer()
                    .client_secret(secret("FRESHTOKEN_CLIENT_SECRET"))
                    .client_secret_jwt(),
            ),
            seconds,
            first_timeout,
            method,
        ),
        "assertion_file" => run(
            built(from_issuer().client_assertion_file(args.need("assertion-file"))),
            seconds,
            first_timeout,
            method,
        ),
        "mtls" => run(
            built(from_issuer().client_auth(ClientAuth::TlsClientAuth)),
            seconds,
            first_timeout,
            method,
        ),
        "jwt_bearer" => {
            let source = common(
                &args,
                JwtBearer::builder(
                    metadata.token_endpoint(),
                    args.need("assertion-issuer"),
                    key(&args),
                )
                .client_id(client_id),
            )
            .build()
            .unwrap_or_else(|e| fail(&e.to_string()));
            run(source, seconds, first_timeout, method)
        }
        "token_exchange" => {
            let (subject, subject_driver) = subject_handle(&args, &discovery);
            let source = common(
                &args,
                TokenExchange::from_handle(metadata.token_endpoint(), client_id, subject)
                    .client_secret(secret("FRESHTOKEN_CLIENT_SECRET"))
                    .client_auth(ClientAuth::Post)
                    .audience(args.need("exchange-audience")),
            )
            .build()
            .unwrap_or_else(|e| fail(&e.to_string()));
            run(source, seconds, first_timeout, method);
            subject_driver.shutdown_blocking();
        }
        other => usage(&format!("unknown --method {other}")),
    }
}
