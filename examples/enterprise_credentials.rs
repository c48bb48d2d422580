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
//!         --first-token-timeout N (default 10: how long to wait for the first token)
//! ```
//!
//! Exit codes: 0 done, 1 the authority, key or credential is wrong (with a
//! message saying which), 2 a bad command line. CI runs every method
//! against oidc-provider (`.ci/examples-enterprise`).

use std::collections::HashMap;
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

fn usage(why: &str) -> ! {
    eprintln!("enterprise_credentials: {why} (see the file's docs for the options)");
    exit(2)
}

fn fail(why: &str) -> ! {
    eprintln!("enterprise_credentials: {why}");
    exit(1)
}

struct Args(HashMap<String, String>);

impl Args {
    fn parse() -> Args {
        let mut map = HashMap::new();
        let mut args = std::env::args().skip(1);
        while let Some(name) = args.next() {
            let Some(name) = name.strip_prefix("--") else {
                usage(&format!("unexpected argument {name}"))
            };
            let value = args
                .next()
                .unwrap_or_else(|| usage(&format!("--{name} needs a value")));
            map.insert(name.to_owned(), value);
        }
        Args(map)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn need(&self, name: &str) -> &str {
        self.get(name)
            .unwrap_or_else(|| usage(&format!("--{name} is required here")))
    }
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
        first.expires_at()
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
    let issuer = args.need("issuer");
    let client_id = args.need("client-id");
    let method = args.need("method");
    let seconds = args
        .get("seconds")
        .map(|s| s.parse().unwrap_or_else(|_| usage("--seconds is a number")))
        .unwrap_or(3);
    let first_timeout = args
        .get("first-token-timeout")
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| usage("--first-token-timeout is a number"))
        })
        .unwrap_or(10);

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
