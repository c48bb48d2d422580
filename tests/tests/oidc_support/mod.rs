//! Starts panva's oidc-provider (tests/oidc/server.mjs) for a test, with
//! the client keys it makes written to a temporary directory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running oidc-provider; killed on drop.
pub struct OidcProvider {
    child: Child,
    // Held open: the server exits when its stdin closes, so it cannot
    // outlive a test process that dies without running Drop.
    _stdin: ChildStdin,
    pub issuer: String,
    keys: tempfile::TempDir,
}

impl OidcProvider {
    #[allow(dead_code)]
    pub fn start() -> OidcProvider {
        Self::start_with(None)
    }

    /// Starts it over https with the certificates in `tls_dir` (see
    /// server.mjs) and its two mTLS clients.
    #[allow(dead_code)]
    pub fn start_tls(tls_dir: &std::path::Path) -> OidcProvider {
        Self::start_with(Some(tls_dir))
    }

    fn start_with(tls_dir: Option<&std::path::Path>) -> OidcProvider {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oidc");
        assert!(
            dir.join("node_modules/oidc-provider/package.json").exists(),
            "oidc-provider is not installed in {}: run .ci/setup-oidc.sh (npm ci) first",
            dir.display()
        );
        let keys = tempfile::tempdir().unwrap();
        let mut command = Command::new("node");
        if let Some(tls) = tls_dir {
            command.env("FRESHTOKEN_OIDC_TLS_DIR", tls);
        }
        let mut child = command
            .arg("server.mjs")
            .current_dir(&dir)
            .env("FRESHTOKEN_OIDC_KEYS_DIR", keys.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` (is Node.js installed?): {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(issuer) = line.strip_prefix("READY ") {
                    let _ = tx.send(issuer.to_owned());
                } else {
                    eprintln!("oidc-provider: {line}");
                }
            }
        });
        // A deadline for a broken setup, not a timing assertion.
        let issuer = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(issuer) => issuer,
            Err(_) => {
                let _ = child.kill();
                panic!("oidc-provider did not become ready (see its output above)");
            }
        };
        OidcProvider {
            child,
            _stdin: stdin,
            issuer,
            keys,
        }
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// A client key file the server wrote (`rsa.pem`, `ec.jwk`, ...).
    #[allow(dead_code)]
    pub fn key(&self, name: &str) -> PathBuf {
        self.keys.path().join(name)
    }
}

impl OidcProvider {
    /// Runs the authorization-code flow for `client_id` as a browser would
    /// (following redirects, keeping cookies; the server completes login
    /// and consent by itself) up to the redirect: the code, for the caller
    /// to redeem with the client's own authentication.
    #[allow(dead_code)]
    pub fn authorization_code(&self, client_id: &str, redirect_uri: &str) -> String {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .into();
        let mut cookies: std::collections::BTreeMap<String, String> = Default::default();
        let mut url = format!(
            "{}/auth?client_id={client_id}&response_type=code&scope=openid%20offline_access\
             &prompt=consent&state=s1&redirect_uri={redirect_uri}",
            self.issuer
        );
        for _ in 0..10 {
            let cookie = cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let response = agent.get(&url).header("Cookie", &cookie).call().unwrap();
            for value in response.headers().get_all("set-cookie") {
                let pair = value.to_str().unwrap().split(';').next().unwrap();
                if let Some((k, v)) = pair.split_once('=') {
                    cookies.insert(k.trim().to_owned(), v.trim().to_owned());
                }
            }
            let location = response
                .headers()
                .get("location")
                .unwrap_or_else(|| panic!("no redirect from {url}: {}", response.status()))
                .to_str()
                .unwrap()
                .to_owned();
            if let Some(query) = location.strip_prefix(&format!("{redirect_uri}?")) {
                return query
                    .split('&')
                    .find_map(|p| p.strip_prefix("code="))
                    .unwrap_or_else(|| panic!("no code in {location}"))
                    .to_owned();
            }
            url = if location.starts_with('/') {
                format!("{}{location}", self.issuer)
            } else {
                location
            };
        }
        panic!("the authorization flow did not reach the redirect URI");
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
