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

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
