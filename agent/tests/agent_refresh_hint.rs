//! The authority's refresh hint (`refresh_in`, as Entra ID sends it) end to
//! end: a real agent process against two `LocalAuthority`s that send one.

mod support;

use std::time::Duration;

use freshtoken::testing::LocalAuthority;
use support::{cc_token, command, wait_for, write_file, Agent};

/// Hour-long tokens: by their lifetime they go stale after 2700 s (75 %),
/// 900 s before they expire.
const LIFETIME: Duration = Duration::from_secs(3600);

/// Two tokens of an hour, one from an authority that says `refresh_in: 6`,
/// one from an authority that says `refresh_in: 1`, below the 5 s refresh
/// floor. The first goes stale 6 s after its request and the second 5 s
/// after (not 1 s), both long before their lifetime's stale point; the
/// agent renews both well within a minute (by their lifetime it would wait
/// 45 minutes); and `/v1/status` and `freshtoken status` say why, without
/// a secret.
#[test]
fn the_authoritys_refresh_hint_sets_the_stale_point_and_is_shown_in_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let authority = |hint| {
        LocalAuthority::builder()
            .client("svc", "s3cret-value")
            .token_lifetime(LIFETIME)
            .refresh_in(Some(hint))
            .start()
            .expect("the local authority")
    };
    let (hinted, floored) = (authority(6), authority(1));
    let secret = write_file(&dir.path().join("svc.secret"), "s3cret-value", 0o600);
    let socket = dir.path().join("agent.sock");
    let config = write_file(
        &dir.path().join("agent.toml"),
        &format!(
            "[agent]\nsocket = \"{}\"\n\n{}\n{}",
            socket.display(),
            cc_token("hinted", &hinted.token_url(), "svc", &secret, ""),
            cc_token("floored", &floored.token_url(), "svc", &secret, ""),
        ),
        0o600,
    );
    let mut agent = Agent::start(&config, &socket, dir.path(), &[]);
    agent.wait_healthy(Duration::from_secs(30));

    // Each token as the status tells it, once it has a note.
    let status = |name: &str| {
        wait_for(Duration::from_secs(30), || {
            let body = agent.get_json("/v1/status")?;
            body["tokens"]
                .as_array()?
                .iter()
                .find(|t| t["name"] == name && t["lifetime_note"].is_object())
                .cloned()
        })
        .unwrap_or_else(|| panic!("no lifetime note for {name}: {}", agent.log_text()))
    };
    // Seconds from the stale point to the expiry: 3600 - hint (± 1 for the
    // whole seconds the status shows), where the lifetime alone gives 900.
    let stale_to_expiry = |t: &serde_json::Value| {
        t["expires_at"].as_u64().unwrap() as i64 - t["stale_at"].as_u64().unwrap() as i64
    };

    let t = status("hinted");
    let note = &t["lifetime_note"];
    assert_eq!(note["kind"], "refresh_hint", "{t}");
    assert_eq!(note["refresh_in"], 6, "{t}");
    assert_eq!(note["stale_after"], 6, "{t}");
    assert!(
        (3592..=3595).contains(&stale_to_expiry(&t)),
        "stale 6 s after the request: {t}"
    );
    let text = note["text"].as_str().unwrap();
    assert!(
        text.starts_with("stale at 20")
            && text.ends_with("because the authority said refresh_in=6 s"),
        "{text}"
    );

    let t = status("floored");
    let note = &t["lifetime_note"];
    assert_eq!(note["refresh_in"], 1, "{t}");
    assert_eq!(note["stale_after"], 5, "raised to the floor: {t}");
    assert!(
        (3593..=3596).contains(&stale_to_expiry(&t)),
        "stale 5 s after the request, not 1 s: {t}"
    );
    assert!(
        note["text"]
            .as_str()
            .unwrap()
            .ends_with("said refresh_in=1 s (raised to the 5 s refresh floor)"),
        "{t}"
    );

    // The hints are followed: both tokens are renewed within a minute,
    // which their lifetime alone would put 45 minutes away.
    for (name, authority) in [("hinted", &hinted), ("floored", &floored)] {
        let renewed = wait_for(Duration::from_secs(60), || {
            (authority.issued_count() >= 2).then_some(())
        });
        assert!(
            renewed.is_some(),
            "{name} was not renewed by its hint: {} requests; {}",
            authority.request_count(),
            agent.log_text()
        );
    }

    // `freshtoken status` shows both notes; neither output holds a token
    // or the secret.
    let served = agent.get("/v1/token/hinted").unwrap();
    assert_eq!(served.status, 200);
    let served: serde_json::Value = serde_json::from_slice(&served.body).unwrap();
    let served = served["access_token"].as_str().unwrap().to_owned();
    let out = command()
        .args(["status", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name}: stale at ")))
            .unwrap_or_else(|| panic!("no note for {name}: {table}"))
            .to_owned()
    };
    assert!(
        line("hinted").ends_with("because the authority said refresh_in=6 s"),
        "{table}"
    );
    assert!(
        line("floored").ends_with("refresh_in=1 s (raised to the 5 s refresh floor)"),
        "{table}"
    );
    let json = agent.get("/v1/status").unwrap().body;
    let json = String::from_utf8(json).unwrap();
    for shown in [&table, &json, &agent.log_text()] {
        assert!(!shown.contains(&served), "a token in {shown}");
        assert!(!shown.contains("s3cret-value"), "the secret in {shown}");
    }
}
