//! Bad configurations: one line naming the key, exit code 2, no secret.

mod support;

use std::time::Duration;

use support::{command, write_file, Agent};

const SECRET: &str = "hunter2-do-not-print";

struct Case {
    what: &'static str,
    /// Config text; `{dir}` is replaced by the temp dir.
    config: String,
    env: Vec<(&'static str, String)>,
    key: &'static str,
}

fn run(case: &Case) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    // A good secret file, a world-readable one, and a regular file where a
    // directory should be.
    write_file(&dir.path().join("good.secret"), SECRET, 0o600);
    write_file(&dir.path().join("open.secret"), SECRET, 0o644);
    write_file(&dir.path().join("not-a-dir"), "x", 0o600);
    let config = write_file(
        &dir.path().join("agent.toml"),
        &case.config.replace("{dir}", &d),
        0o600,
    );
    let mut cmd = command();
    cmd.arg("agent").arg("--config").arg(&config);
    for (k, v) in &case.env {
        cmd.env(k, v.replace("{dir}", &d));
    }
    // Bounded: an agent that takes the configuration runs until killed.
    let (code, stdout, stderr) = support::output_within(cmd, Duration::from_secs(30));
    assert_eq!(code, Some(2), "{}: {stderr}", case.what);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}: not one line: {stderr}", case.what);
    assert!(
        lines[0].contains(case.key),
        "{}: the key is not named: {stderr}",
        case.what
    );
    assert!(
        !stderr.contains(SECRET) && !stdout.contains(SECRET),
        "{}: secret printed",
        case.what
    );
    eprintln!("{}: {}", case.what, lines[0]);
}

fn token(extra: &str) -> String {
    format!(
        "[agent]\nsocket = \"{{dir}}/agent.sock\"\n\n[tokens.api]\ntoken_url = \"http://127.0.0.1:9/token\"\n\
         client_id = \"svc\"\n{extra}"
    )
}

#[test]
fn bad_configurations_name_the_key_and_exit_2() {
    let cases = [
        Case {
            what: "unknown key",
            config: token("client_secret_file = \"{dir}/good.secret\"\nclientid = \"x\"\n"),
            env: vec![],
            key: "tokens.api.clientid",
        },
        Case {
            what: "unknown nested key",
            config: token("client_secret_file = \"{dir}/good.secret\"\n[tokens.api.file]\npth = \"x\"\n"),
            env: vec![],
            key: "tokens.api.file.pth",
        },
        Case {
            what: "missing secret file",
            config: token("client_secret_file = \"{dir}/missing.secret\"\n"),
            env: vec![],
            key: "tokens.api.client_secret_file",
        },
        Case {
            what: "secret file readable by others",
            config: token("client_secret_file = \"{dir}/open.secret\"\n"),
            env: vec![],
            key: "tokens.api.client_secret_file",
        },
        Case {
            what: "unwritable token file directory",
            config: token(
                "client_secret_file = \"{dir}/good.secret\"\n[tokens.api.file]\npath = \"{dir}/not-a-dir/api.token\"\n",
            ),
            env: vec![],
            key: "tokens.api.file.path",
        },
        Case {
            what: "a secret in the file",
            config: token(&format!("client_secret = \"{SECRET}\"\n")),
            env: vec![],
            key: "tokens.api.client_secret",
        },
        Case {
            what: "unknown environment variable",
            config: token("client_secret_file = \"{dir}/good.secret\"\n"),
            env: vec![("FRESHTOKEN_TOKENS_API_CLIENTID", "x".into())],
            key: "FRESHTOKEN_TOKENS_API_CLIENTID",
        },
        Case {
            what: "secret variable not set",
            config: token("client_secret_env = \"NOT_SET_ANYWHERE_42\"\n"),
            env: vec![],
            key: "tokens.api.client_secret_env",
        },
        Case {
            what: "a wrong type",
            config: token("client_secret_file = \"{dir}/good.secret\"\nfetch_timeout_secs = \"soon\"\n"),
            env: vec![],
            key: "tokens.api.fetch_timeout_secs",
        },
        Case {
            what: "broken TOML",
            config: format!("[tokens.api\nclient_secret = \"{SECRET}\"\n"),
            env: vec![],
            key: "agent.toml:1",
        },
        Case {
            what: "listen not on loopback",
            config: token("client_secret_file = \"{dir}/good.secret\"\n")
                .replace("[agent]\n", "[agent]\nlisten = \"0.0.0.0:9464\"\n"),
            env: vec![],
            key: "agent.listen",
        },
        Case {
            what: "a Redis password in the file",
            config: token(&format!(
                "client_secret_file = \"{{dir}}/good.secret\"\n[tokens.api.cache]\nredis_url = \"redis://:{SECRET}@127.0.0.1/\"\n"
            )),
            env: vec![],
            key: "tokens.api.cache.redis_url",
        },
        Case {
            what: "a mode as a bare number (octal or decimal?)",
            config: token(
                "client_secret_file = \"{dir}/good.secret\"\n[tokens.api.file]\npath = \"{dir}/api.token\"\nmode = 640\n",
            ),
            env: vec![],
            key: "tokens.api.file.mode",
        },
        Case {
            what: "a mode that is not octal",
            config: token(
                "client_secret_file = \"{dir}/good.secret\"\n[tokens.api.file]\npath = \"{dir}/api.token\"\n",
            ),
            env: vec![("FRESHTOKEN_TOKENS_API_FILE_MODE", "0986".into())],
            key: "FRESHTOKEN_TOKENS_API_FILE_MODE",
        },
        Case {
            what: "a refresh token without a cache for its rotations",
            config: token(
                "grant = \"refresh_token\"\nrefresh_token_file = \"{dir}/good.secret\"\n",
            ),
            env: vec![],
            key: "tokens.api.cache",
        },
    ];
    for case in &cases {
        run(case);
    }
}

/// A token from a cloud's identity endpoint, `api`, with `grant` and
/// `extra` keys.
fn cloud(grant: &str, extra: &str) -> String {
    format!(
        "[agent]\nsocket = \"{{dir}}/agent.sock\"\n\n[tokens.api]\ngrant = \"{grant}\"\n{extra}"
    )
}

/// The cloud identity grants: a key another grant takes, a missing
/// resource or platform variable, an endpoint plain http may not go to.
/// The identity header (here the secret) is never printed.
#[test]
fn bad_cloud_configurations_name_the_key_and_exit_2() {
    let resource = "resource = \"https://vault.azure.net\"\n";
    let header = || ("IDENTITY_HEADER", SECRET.to_owned());
    let cases = [
        Case {
            what: "an unknown grant",
            config: cloud("gce", ""),
            env: vec![],
            key: "tokens.api.grant",
        },
        Case {
            what: "an OAuth2 key on a metadata server token",
            config: cloud("gce_metadata", "token_url = \"http://127.0.0.1:9/token\"\n"),
            env: vec![],
            key: "tokens.api.token_url",
        },
        Case {
            what: "a client secret from the environment on a managed identity",
            config: cloud("azure_imds", resource),
            env: vec![("FRESHTOKEN_TOKENS_API_CLIENT_SECRET", SECRET.to_owned())],
            key: "FRESHTOKEN_TOKENS_API_CLIENT_SECRET",
        },
        Case {
            what: "an Azure key on a GCE token",
            config: cloud("gce_metadata", "identity_client_id = \"x\"\n"),
            env: vec![],
            key: "tokens.api.identity_client_id",
        },
        Case {
            what: "a service account that is no email",
            config: cloud("gce_metadata", "service_account = \"../../x\"\n"),
            env: vec![],
            key: "tokens.api.service_account",
        },
        Case {
            what: "plain http to another host than the metadata server",
            config: cloud("gce_metadata", "metadata_host = \"metadata.example.com\"\n"),
            env: vec![],
            key: "tokens.api.metadata_host",
        },
        Case {
            what: "GCE_METADATA_HOST naming another host",
            config: cloud("gce_metadata", ""),
            env: vec![("GCE_METADATA_HOST", "10.0.0.1".to_owned())],
            key: "GCE_METADATA_HOST",
        },
        Case {
            what: "a managed identity without a resource",
            config: cloud("azure_imds", ""),
            env: vec![],
            key: "tokens.api.resource",
        },
        Case {
            what: "two names for one managed identity",
            config: cloud(
                "azure_imds",
                &format!("{resource}identity_client_id = \"a\"\nidentity_object_id = \"b\"\n"),
            ),
            env: vec![],
            key: "tokens.api.identity_client_id",
        },
        Case {
            what: "plain http to another host than IMDS",
            config: cloud(
                "azure_imds",
                &format!(
                    "{resource}identity_endpoint = \"http://169.254.169.253/metadata/identity/oauth2/token\"\n"
                ),
            ),
            env: vec![],
            key: "tokens.api.identity_endpoint",
        },
        Case {
            what: "App Service without IDENTITY_ENDPOINT",
            config: cloud("azure_app_service", resource),
            env: vec![header()],
            key: "tokens.api.identity_endpoint",
        },
        Case {
            what: "App Service without its identity header",
            config: cloud("azure_app_service", resource),
            env: vec![(
                "IDENTITY_ENDPOINT",
                "http://127.0.0.1:9/msi/token".to_owned(),
            )],
            key: "tokens.api.identity_header_env",
        },
        Case {
            what: "IDENTITY_ENDPOINT in plain http to a routable address",
            config: cloud("azure_app_service", resource),
            env: vec![
                header(),
                (
                    "IDENTITY_ENDPOINT",
                    "http://172.16.0.9:8081/msi/token".to_owned(),
                ),
            ],
            key: "IDENTITY_ENDPOINT",
        },
    ];
    for case in &cases {
        run(case);
    }
}

/// A configuration file decides the token URL and which secret is sent
/// there: one that group or others can write to, or another user's, is
/// refused by the agent and by `token`, exit code 2.
#[test]
fn a_configuration_file_others_can_change_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir.path().join("good.secret"), SECRET, 0o600);
    let text = token("client_secret_file = \"{dir}/good.secret\"\n")
        .replace("{dir}", &dir.path().display().to_string());
    let config = write_file(&dir.path().join("agent.toml"), &text, 0o600);
    // (what, mode, owner)
    let mut tries = vec![
        ("writable by the group", 0o660, None),
        ("writable by others", 0o602, None),
    ];
    if rustix::process::geteuid().is_root() {
        tries.push(("another user's", 0o644, Some(65534)));
    } else {
        eprintln!("not root: another user's file not tried");
    }
    for (what, mode, owner) in tries {
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).unwrap();
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&config, Some(uid), Some(uid)).unwrap();
        }
        for args in [
            &["agent", "--config"][..],
            &["token", "api", "--config"][..],
        ] {
            let mut cmd = command();
            cmd.args(args).arg(&config);
            let (code, _, stderr) = support::output_within(cmd, Duration::from_secs(30));
            assert_eq!(code, Some(2), "{what} ({args:?}): {stderr}");
            assert!(
                stderr.contains("agent.toml") && stderr.lines().count() == 1,
                "{what}: {stderr}"
            );
        }
    }
}

/// An assertion file is exempt from the mode check (projected tokens are
/// 0644): the agent starts with one, and stops cleanly.
#[test]
fn an_assertion_file_may_be_world_readable() {
    let dir = tempfile::tempdir().unwrap();
    let assertion = write_file(&dir.path().join("token"), "eyJhbGciOiJub25lIn0.e30.", 0o644);
    let socket = dir.path().join("agent.sock");
    let config = write_file(
        &dir.path().join("agent.toml"),
        &format!(
            "[agent]\nsocket = \"{}\"\n\n[tokens.api]\ntoken_url = \"http://127.0.0.1:9/token\"\n\
             client_id = \"svc\"\nclient_assertion_file = \"{}\"\n",
            socket.display(),
            assertion.display()
        ),
        0o600,
    );
    let mut agent = Agent::start(&config, &socket, dir.path(), &[]);
    // Up (the authority is unreachable, so not healthy): /healthz says 503.
    let answer = support::wait_for(Duration::from_secs(10), || agent.get("/healthz").ok())
        .unwrap_or_else(|| panic!("the agent did not start: {}", agent.log_text()));
    assert_eq!(answer.status, 503);
    agent.signal(support::Signal::TERM);
    let status = agent.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}: {}", agent.log_text());
}
