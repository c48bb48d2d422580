//! `freshtoken login NAME` as a real process against panva's oidc-provider
//! (tests/oidc/server.mjs, device flow on): the test reads the URL and the
//! code the command prints, approves (or aborts) through the provider's own
//! user pages over HTTP, and checks where the refresh token went.

mod support;

mod device_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use device_support::{decide, Decision};
use support::{command, output_within, write_file};

/// oidc-provider on an ephemeral loopback port; killed on drop.
struct Provider {
    child: Child,
    _stdin: ChildStdin,
    issuer: String,
}

impl Provider {
    fn start() -> Provider {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/oidc");
        assert!(
            dir.join("node_modules/oidc-provider/package.json").exists(),
            "oidc-provider is not installed in {}: run .ci/setup-oidc.sh first",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(issuer) = line.strip_prefix("READY ") {
                    let _ = tx.send(issuer.to_owned());
                }
            }
        });
        let issuer = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("oidc-provider did not become ready");
        Provider {
            child,
            _stdin: stdin,
            issuer,
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, issuer: &str) -> PathBuf {
    write_file(
        &dir.join("agent.toml"),
        &format!(
            "[agent]\nsocket = \"{dir}/agent.sock\"\n\n\
             [tokens.cli]\ngrant = \"refresh_token\"\ntoken_url = \"{issuer}/token\"\n\
             client_id = \"device-cli\"\ndevice_authorization_url = \"{issuer}/device/auth\"\n\
             scope = \"openid offline_access\"\nrefresh_token_file = \"{dir}/cli.refresh\"\n\n\
             [tokens.cli.cache]\nfile = \"{dir}/cache/cli.json\"\n",
            dir = dir.display()
        ),
        0o600,
    )
}

/// Starts `freshtoken login cli` and reads what it prints up to the
/// waiting line: the verification URI, the code and the complete URI.
fn start_login(config: &Path) -> (Child, String, String, Option<String>) {
    let mut child = command()
        .args(["login", "cli", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut uri, mut code, mut complete) = (None, None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(v) = line.strip_prefix("Sign in at: ") {
            uri = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("Code: ") {
            code = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("Or open: ") {
            complete = Some(v.to_owned());
        } else if line.starts_with("Waiting for the sign-in") {
            break;
        }
    }
    // The rest of stdout, for the exit check.
    std::thread::spawn(move || for _ in lines {});
    (
        child,
        uri.expect("a verification URI"),
        code.expect("a user code"),
        complete,
    )
}

fn wait_exit(child: &mut Child) -> (Option<i32>, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return (status.code(), stderr);
        }
        assert!(std::time::Instant::now() < deadline, "login never ended");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The user approves: the refresh token lands in refresh_token_file (mode
/// 0600) and the cache, and `freshtoken token` works from it with the
/// cache gone.
#[test]
fn login_stores_a_refresh_token_that_the_agent_uses() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &provider.issuer);
    let (mut child, uri, code, complete) = start_login(&config);
    assert_eq!(uri, format!("{}/device", provider.issuer));
    assert!(complete.expect("a complete URI").contains(&code));
    decide(&uri, &code, Decision::Approve);
    let (status, stderr) = wait_exit(&mut child);
    assert_eq!(status, Some(0), "{stderr}");

    let file = dir.path().join("cli.refresh");
    let meta = std::fs::metadata(&file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let refresh_token = std::fs::read_to_string(&file).unwrap();
    assert!(!refresh_token.trim().is_empty());
    assert!(!stderr.contains(refresh_token.trim()));
    assert!(dir.path().join("cache/cli.json").exists());

    // From the cache: the login's access token.
    let mut token = command();
    token.args(["token", "cli", "--config"]).arg(&config);
    let (code, out, err) = output_within(token, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.trim().is_empty());
    // Without the cache: fetched with the refresh token from the file.
    std::fs::remove_dir_all(dir.path().join("cache")).unwrap();
    let mut token = command();
    token.args(["token", "cli", "--config"]).arg(&config);
    let (code, fetched, err) = output_within(token, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    assert!(!fetched.trim().is_empty());
    assert_ne!(fetched.trim(), out.trim());
}

/// The user aborts: exit 1, a message that says so, no file written.
#[test]
fn an_aborted_login_fails_and_writes_nothing() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &provider.issuer);
    let (mut child, uri, code, _) = start_login(&config);
    decide(&uri, &code, Decision::Abort);
    let (status, stderr) = wait_exit(&mut child);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(stderr.contains("denied"), "{stderr}");
    assert!(!dir.path().join("cli.refresh").exists());

    // A token without a device endpoint is a configuration error (2).
    let bare = write_file(
        &dir.path().join("bare.toml"),
        &format!(
            "[tokens.cli]\ngrant = \"refresh_token\"\ntoken_url = \"{}/token\"\n\
             client_id = \"device-cli\"\nrefresh_token_file = \"{}/x.refresh\"\n\n\
             [tokens.cli.cache]\nfile = \"{}/c.json\"\n",
            provider.issuer,
            dir.path().display(),
            dir.path().display()
        ),
        0o600,
    );
    let mut login = command();
    login.args(["login", "cli", "--config"]).arg(&bare);
    let (code, _, err) = output_within(login, Duration::from_secs(60));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("device_authorization_url"), "{err}");
}
