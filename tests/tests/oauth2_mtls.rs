//! RFC 8705 mutual-TLS client authentication against panva's
//! oidc-provider served over https (tests/oidc/server.mjs with
//! FRESHTOKEN_OIDC_TLS_DIR): the server asks for a client certificate,
//! verifies it against the test CA with node's TLS stack, and authorizes
//! from the socket's verified certificate (`tls_client_auth`, subject DN)
//! or from the registered self-signed certificate
//! (`self_signed_tls_client_auth`). The certificates are made here with
//! the `openssl` command.
//!
//! Needs Node.js, `tests/oidc/node_modules` (run `.ci/setup-oidc.sh`) and
//! `openssl`.

use std::path::Path;
use std::process::Command;

mod oauth2_common;
mod oidc_support;

use freshtoken::oauth2::JwsAlgorithm;
use freshtoken::oauth2::{ClientAuth, ClientCredentials, Discovery, SigningKey, UreqTransport};
use freshtoken::source::FetchRequest;
use freshtoken::source::TokenSource;
use freshtoken::FetchErrorKind;
use oauth2_common::claims;
use oidc_support::OidcProvider;

const RESOURCE: &str = "https://api.freshtoken.test/";

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

/// A test CA, a server certificate for 127.0.0.1, a client certificate
/// from the CA (CN=mtls-client), one from another CA, and a self-signed one.
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let selfsigned = |name: &str, cn: &str| {
        let mut args = vec!["req", "-x509", "-days", "2", "-subj"];
        let subj = format!("/CN={cn}");
        args.push(&subj);
        args.extend(ec);
        let (k, c) = (format!("{name}-key.pem"), format!("{name}.pem"));
        args.extend(["-keyout", &k, "-out", &c]);
        openssl(dir, &args);
    };
    selfsigned("ca", "freshtoken test CA");
    selfsigned("other-ca", "another CA");
    selfsigned("selfsigned", "mtls-self");
    let issue = |name: &str, cn: &str, ca: &str, ext: &str| {
        let subj = format!("/CN={cn}");
        let (k, r, c) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let mut args = vec!["req", "-new", "-subj", &subj];
        args.extend(ec);
        args.extend(["-keyout", &k, "-out", &r]);
        openssl(dir, &args);
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (ca_pem, ca_key, ext_file) = (
            format!("{ca}.pem"),
            format!("{ca}-key.pem"),
            format!("{name}.ext"),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &r,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &c,
                "-extfile",
                &ext_file,
            ],
        );
    };
    issue(
        "server",
        "127.0.0.1",
        "ca",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    issue(
        "client",
        "mtls-client",
        "ca",
        "extendedKeyUsage=clientAuth\n",
    );
    issue(
        "rogue",
        "mtls-client",
        "other-ca",
        "extendedKeyUsage=clientAuth\n",
    );
}

fn transport(dir: &Path, cert: Option<&str>) -> UreqTransport {
    let t = UreqTransport::new()
        .root_certificates_pem(&std::fs::read(dir.join("ca.pem")).unwrap())
        .unwrap();
    match cert {
        None => t,
        Some(name) => t
            .client_certificate_files(
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}-key.pem")),
            )
            .unwrap(),
    }
}

fn source(op: &OidcProvider, client: &str, transport: UreqTransport) -> ClientCredentials {
    ClientCredentials::builder_without_secret(op.token_url(), client)
        .client_auth(ClientAuth::TlsClientAuth)
        .scope("api:read")
        .resource(RESOURCE)
        .transport(transport)
        .build()
        .unwrap()
}

#[test]
fn mtls_client_auth_with_a_ca_certificate_and_a_self_signed_one() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let op = OidcProvider::start_tls(dir.path());
    assert!(op.issuer.starts_with("https://127.0.0.1:"));

    // Discovery over the same private-CA transport.
    let meta = Discovery::with_transport(&op.issuer, transport(dir.path(), None))
        .unwrap()
        .metadata()
        .unwrap();
    assert!(meta.supports_auth_method(ClientAuth::TlsClientAuth));
    assert!(meta.supports_auth_method(ClientAuth::SelfSignedTlsClientAuth));

    // tls_client_auth with the CA's certificate: a token bound to it.
    let t = transport(dir.path(), Some("client"));
    let thumbprint = t.certificate_thumbprint().unwrap().to_owned();
    // The same thumbprint as a signing key's x5t#S256 header would carry.
    let key = SigningKey::from_pem_file(JwsAlgorithm::Es256, dir.path().join("client-key.pem"))
        .unwrap()
        .with_certificate_pem(&std::fs::read(dir.path().join("client.pem")).unwrap())
        .unwrap();
    assert_eq!(key.x5t_s256(), Some(thumbprint.as_str()));
    assert!(format!("{t:?}").contains(&thumbprint));
    let answer = source(&op, "mtls-client", t)
        .fetch(&FetchRequest::first())
        .unwrap();
    let c = claims(answer.access_token.expose_secret());
    assert_eq!(c["client_id"].as_str(), Some("mtls-client"));
    assert_eq!(c["cnf"]["x5t#S256"].as_str(), Some(thumbprint.as_str()));

    // self_signed_tls_client_auth with the registered certificate.
    let t = transport(dir.path(), Some("selfsigned"));
    let answer = ClientCredentials::builder_without_secret(op.token_url(), "mtls-self")
        .client_auth(ClientAuth::SelfSignedTlsClientAuth)
        .scope("api:read")
        .resource(RESOURCE)
        .transport(t)
        .build()
        .unwrap()
        .fetch(&FetchRequest::first())
        .unwrap();
    assert_eq!(
        claims(answer.access_token.expose_secret())["client_id"].as_str(),
        Some("mtls-self")
    );
}

#[test]
fn mtls_without_the_right_certificate_is_invalid_client() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let op = OidcProvider::start_tls(dir.path());
    // No certificate, one from another CA with the right subject, and the
    // CA-issued one for the self-signed client: all refused, permanently.
    for (client, cert) in [
        ("mtls-client", None),
        ("mtls-client", Some("rogue")),
        ("mtls-client", Some("selfsigned")),
        ("mtls-self", Some("client")),
    ] {
        let e = source(&op, client, transport(dir.path(), cert))
            .fetch(&FetchRequest::first())
            .unwrap_err();
        assert_eq!(
            (e.kind(), e.error_code()),
            (FetchErrorKind::Permanent, Some("invalid_client")),
            "{client} {cert:?}: {e}"
        );
    }
}
