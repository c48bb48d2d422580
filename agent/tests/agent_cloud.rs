//! The agent's cloud identity grants as real processes, against the local
//! servers that implement each documented protocol (cloud_support, shared
//! with the library's tests/tests/cloud_identity.rs): one agent with a
//! GCE metadata server token (the host from `GCE_METADATA_HOST`), an Azure
//! IMDS token for a user-assigned identity (`identity_endpoint`,
//! `identity_client_id`) and an App Service token (`IDENTITY_ENDPOINT` and
//! `IDENTITY_HEADER`, as the platform sets them). Each token is served and
//! renewed as its server renews it; the identity header appears in no log,
//! status or child environment.

mod cloud_support;
mod support;

use std::time::Duration;

use cloud_support::{
    app_service_server, gce_server, imds_server, Faults, Server, TokenCache, AZ_CLIENT_ID,
    AZ_RESOURCE, GCE_ACCOUNT, IDENTITY_HEADER,
};
use support::{command, output_within, wait_for, write_file, Agent};

const SCOPES: &str =
    "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email";

/// Tokens of 8 s that the server hands back until less than half is left,
/// as metadata servers do with theirs (scaled down from an hour and
/// minutes).
fn cache() -> TokenCache {
    TokenCache::new(Duration::from_secs(8), Duration::from_secs(4))
}

#[test]
fn agent_serves_and_renews_tokens_from_the_three_cloud_endpoints() {
    let gce = gce_server(cache(), Faults::default());
    let imds = imds_server(cache(), Faults::default());
    let app = app_service_server(cache());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let config = write_file(
        &dir.path().join("agent.toml"),
        &format!(
            "[agent]\nsocket = \"{}\"\n\n\
             [tokens.gce]\ngrant = \"gce_metadata\"\nservice_account = \"{GCE_ACCOUNT}\"\n\
             scope = \"{SCOPES}\"\n\n\
             [tokens.imds]\ngrant = \"azure_imds\"\nresource = \"{AZ_RESOURCE}\"\n\
             identity_client_id = \"{AZ_CLIENT_ID}\"\n\
             identity_endpoint = \"{}/metadata/identity/oauth2/token\"\n\n\
             [tokens.app]\ngrant = \"azure_app_service\"\nresource = \"{AZ_RESOURCE}\"\n",
            socket.display(),
            imds.base(),
        ),
        0o600,
    );
    let gce_host = gce.addr.to_string();
    let app_endpoint = format!("{}/msi/token", app.base());
    let platform = [
        ("GCE_METADATA_HOST", gce_host.as_str()),
        ("IDENTITY_ENDPOINT", app_endpoint.as_str()),
        ("IDENTITY_HEADER", IDENTITY_HEADER),
    ];
    let mut agent = Agent::start(&config, &socket, dir.path(), &platform);
    agent.wait_healthy(Duration::from_secs(20));
    let served = |name: &str| {
        agent
            .get_json(&format!("/v1/token/{name}"))
            .map(|body| body["access_token"].as_str().expect("a token").to_owned())
    };
    // Each token as its server issued it, then renewed as the server
    // renews its cached one, a few seconds out.
    for (name, prefix) in [
        ("gce", "ya29.gce-"),
        ("imds", "eyJ.imds-"),
        ("app", "eyJ.appsvc-"),
    ] {
        // Waited for, not read once: a token of 8 s that its server hands
        // back until less than half is left can lapse for a moment on a
        // loaded machine, before the renewal lands.
        let first = wait_for(Duration::from_secs(30), || served(name))
            .unwrap_or_else(|| panic!("no {name} token: {}", agent.log_text()));
        assert!(first.starts_with(prefix), "{name}: {first}");
        wait_for(Duration::from_secs(60), || {
            served(name)
                .filter(|now| *now != first && now.starts_with(prefix))
                .map(|_| ())
        })
        .unwrap_or_else(|| panic!("{name} was not renewed: {}", agent.log_text()));
    }

    // Each server saw its protocol's required header and parameters on
    // every request (they refuse requests without them, so the tokens
    // above prove it too).
    let check = |server: &Server, what: &str, f: &dyn Fn(&cloud_support::Seen) -> bool| {
        let seen = server.requests();
        assert!(seen.len() >= 2, "{what}: {seen:?}");
        assert!(seen.iter().all(f), "{what}: {seen:?}");
    };
    check(&gce, "gce", &|r| {
        r.headers.get("metadata-flavor").map(String::as_str) == Some("Google")
            && r.path
                == format!("/computeMetadata/v1/instance/service-accounts/{GCE_ACCOUNT}/token")
            && r.query.get("scopes").map(String::as_str) == Some(&SCOPES.replace(' ', ","))
    });
    check(&imds, "imds", &|r| {
        r.headers.get("metadata").map(String::as_str) == Some("true")
            && r.query.get("resource").map(String::as_str) == Some(AZ_RESOURCE)
            && r.query.get("client_id").map(String::as_str) == Some(AZ_CLIENT_ID)
    });
    check(&app, "app", &|r| {
        r.headers.get("x-identity-header").map(String::as_str) == Some(IDENTITY_HEADER)
            && r.query.get("api-version").map(String::as_str) == Some("2019-08-01")
            && r.query.get("resource").map(String::as_str) == Some(AZ_RESOURCE)
    });

    // The status names each grant, and holds no secret.
    let status = agent.get("/v1/status").expect("status");
    let text = String::from_utf8_lossy(&status.body).into_owned();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let grants: Vec<(&str, &str)> = json["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["grant"].as_str().unwrap()))
        .collect();
    assert_eq!(
        grants,
        [
            ("app", "azure_app_service"),
            ("gce", "gce_metadata"),
            ("imds", "azure_imds")
        ]
    );
    assert!(!text.contains(IDENTITY_HEADER), "{text}");

    // `token` and `exec` through the agent; exec's child does not get the
    // identity header the agent read (only the token).
    let mut token = command();
    token
        .args(["token", "gce", "--socket"])
        .arg(&socket)
        .envs(platform);
    let (code, stdout, stderr) = output_within(token, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.trim().starts_with("ya29.gce-"), "{stdout}");
    let mut exec = command();
    exec.args(["exec", "app", "--config"])
        .arg(&config)
        .args([
            "--",
            "sh",
            "-c",
            "echo \"token=$ACCESS_TOKEN header=$IDENTITY_HEADER\"",
        ])
        .envs(platform);
    let (code, stdout, stderr) = output_within(exec, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("token=eyJ.appsvc-"), "{stdout}");
    assert!(stdout.trim_end().ends_with("header="), "{stdout}");

    agent.signal(support::Signal::TERM);
    let exit = agent
        .wait_exit(Duration::from_secs(20))
        .expect("the agent stops");
    assert!(exit.success(), "{exit}: {}", agent.log_text());
    let log = agent.log_text();
    assert!(!log.contains(IDENTITY_HEADER), "{log}");
    for token in ["ya29.gce-", "eyJ.imds-", "eyJ.appsvc-"] {
        assert!(!log.contains(token), "a token in the log: {log}");
    }
}
