//! `freshtoken exec --supervise` as real processes: a shell child that
//! keeps running while tokens of a few seconds are renewed, signalled
//! after its token file is rewritten or restarted with the new variable;
//! signals to `exec` forwarded; the child's exit status passed through; a
//! child that dies not started again.

mod support;

use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use support::{command, one_token, wait_for, Agent, OneToken, Signal};

fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn signal(child: &Child, signal: Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a pid");
    rustix::process::kill_process(pid, signal).expect("kill");
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    wait_for(timeout, || child.try_wait().ok().flatten())
}

/// Kills a still-running `exec` when a test fails.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The `exec --supervise` of the `api` token with `extra` arguments,
/// running `script` under sh with `LOG` set.
fn exec(config: &Path, dir: &Path, log: &Path, extra: &[&str], script: &str) -> Reap {
    let stderr = std::fs::File::create(dir.join("exec.log")).unwrap();
    let child = command()
        .arg("exec")
        .arg("api")
        .arg("--config")
        .arg(config)
        .arg("--supervise")
        .args(extra)
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(script)
        .env("LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start exec");
    Reap(child)
}

/// Signal mode, the tokens from the library's driver in `exec` itself (no
/// agent runs): the child starts with the token in its variable and file,
/// gets SIGHUP after each renewal with the new token already in the file,
/// and a SIGTERM to `exec` reaches it; its exit code is `exec`'s.
#[test]
fn signal_mode_rewrites_the_file_then_sends_sighup_and_forwards_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let OneToken {
        authority, config, ..
    } = one_token(
        dir.path(),
        "run/agent.sock",
        Some(Duration::from_secs(3)),
        "",
    );
    let log = dir.path().join("child.log");
    let token_file = dir.path().join("tok/api.token");
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    let script = r#"
        echo "start $ACCESS_TOKEN $(cat "$ACCESS_TOKEN_FILE")" >> "$LOG"
        trap 'echo "hup $(cat "$ACCESS_TOKEN_FILE")" >> "$LOG"' HUP
        trap 'echo term >> "$LOG"; exit 7' TERM
        trap 'echo usr1 >> "$LOG"' USR1
        while :; do sleep 0.05; done
    "#;
    let mut exec = exec(
        &config,
        dir.path(),
        &log,
        &["--token-file", token_file.to_str().unwrap()],
        script,
    );
    // Two renewals, each signalled.
    let seen = wait_for(Duration::from_secs(40), || {
        let l = lines(&log);
        (l.iter().filter(|x| x.starts_with("hup ")).count() >= 2).then_some(l)
    });
    let exec_log = || std::fs::read_to_string(dir.path().join("exec.log")).unwrap_or_default();
    let seen = seen.unwrap_or_else(|| panic!("no two SIGHUPs: {:?} {}", lines(&log), exec_log()));
    let start: Vec<&str> = seen[0].split(' ').collect();
    assert_eq!(start[0], "start");
    // The variable and the file held the same token at the start.
    assert_eq!(start[1], start[2]);
    let hups: Vec<&str> = seen.iter().filter_map(|l| l.strip_prefix("hup ")).collect();
    // Each SIGHUP came after the file held a new token.
    assert_ne!(hups[0], start[1]);
    assert_ne!(hups[1], hups[0]);
    // Every token the child saw is one the authority issued.
    assert!(authority.requests().len() >= 3);

    // Signals sent to exec reach the child.
    signal(&exec.0, Signal::USR1);
    wait_for(Duration::from_secs(20), || {
        lines(&log).iter().any(|l| l == "usr1").then_some(())
    })
    .expect("SIGUSR1 forwarded");
    signal(&exec.0, Signal::TERM);
    let status = wait_exit(&mut exec.0, Duration::from_secs(20)).expect("exec exits");
    assert_eq!(status.code(), Some(7), "{}", exec_log());
    assert!(lines(&log).iter().any(|l| l == "term"));
    // The token file is 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// Restart mode, the tokens from a running agent: a new token stops the
/// child (SIGTERM) and starts another with the new variable; a child that
/// dies on its own ends `exec` with its status and is not started again.
#[test]
fn restart_mode_restarts_with_the_new_variable_and_a_dead_child_is_not_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let OneToken {
        authority: _authority,
        config,
        socket,
    } = one_token(
        dir.path(),
        "run/agent.sock",
        Some(Duration::from_secs(3)),
        "",
    );
    let mut agent = Agent::start(&config, &socket, dir.path(), &[]);
    agent.wait_healthy(Duration::from_secs(10));
    let log = dir.path().join("child.log");
    let script = r#"
        echo "start $$ $ACCESS_TOKEN" >> "$LOG"
        trap 'echo "term $$" >> "$LOG"; exit 0' TERM
        while :; do sleep 0.05; done
    "#;
    let mut exec = exec(
        &config,
        dir.path(),
        &log,
        &["--on-refresh", "restart", "--poll", "0.2"],
        script,
    );
    let exec_log = || std::fs::read_to_string(dir.path().join("exec.log")).unwrap_or_default();
    let seen = wait_for(Duration::from_secs(40), || {
        let l = lines(&log);
        (l.iter().filter(|x| x.starts_with("start ")).count() >= 2).then_some(l)
    })
    .unwrap_or_else(|| panic!("no restart: {:?} {}", lines(&log), exec_log()));
    let first: Vec<&str> = seen[0].split(' ').collect();
    let second_at = seen.iter().rposition(|l| l.starts_with("start ")).unwrap();
    let second: Vec<&str> = seen[second_at].split(' ').collect();
    // The first child was stopped with SIGTERM before the second started.
    assert!(
        seen[..second_at].contains(&format!("term {}", first[1])),
        "{seen:?}"
    );
    assert_ne!(first[2], second[2], "the restart brought a new token");

    // The current child dies (SIGKILL): exec exits with 128 + 9, and no
    // child is started again.
    let current = lines(&log)
        .iter()
        .rev()
        .find(|l| l.starts_with("start "))
        .map(|l| l.split(' ').nth(1).unwrap().parse::<i32>().unwrap())
        .unwrap();
    let pid = rustix::process::Pid::from_raw(current).unwrap();
    rustix::process::kill_process(pid, Signal::KILL).unwrap();
    let status = wait_exit(&mut exec.0, Duration::from_secs(20)).expect("exec exits");
    assert_eq!(status.code(), Some(137), "{}", exec_log());
    // exec ended with the child instead of starting another one.
    let last = lines(&log);
    assert!(
        last.last()
            .is_some_and(|l| l.starts_with(&format!("start {current} "))),
        "{last:?}"
    );
}

/// The child's exit code is exec's; a command that does not exist is 127.
#[test]
fn exit_codes_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let OneToken {
        authority: _authority,
        config,
        ..
    } = one_token(dir.path(), "run/agent.sock", None, "");
    let log = dir.path().join("child.log");
    let mut exec = exec(
        &config,
        dir.path(),
        &log,
        &["--on-refresh", "restart"],
        "exit 42",
    );
    let status = wait_exit(&mut exec.0, Duration::from_secs(30)).unwrap_or_else(|| {
        panic!(
            "exec did not exit: {}",
            std::fs::read_to_string(dir.path().join("exec.log")).unwrap_or_default()
        )
    });
    assert_eq!(status.code(), Some(42));

    let status = command()
        .args(["exec", "api", "--config"])
        .arg(&config)
        .args(["--supervise", "--on-refresh", "restart", "--"])
        .arg(dir.path().join("no-such-program"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(127));

    // Signal mode without a token file is a usage error.
    let status = command()
        .args(["exec", "api", "--config"])
        .arg(&config)
        .args(["--supervise", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}

/// `exec --supervise --min-validity`, tokens from a running agent: the
/// agent's token has less than the 59 s asked for left, so the child
/// starts with a token the agent refreshed early, once, for it; polls
/// after that find the new hour-long token valid long enough and cause no
/// request, and a newer token still reaches the child (SIGHUP after the
/// file is rewritten).
#[test]
fn min_validity_child_starts_with_a_token_refreshed_early_once() {
    let dir = tempfile::tempdir().unwrap();
    let OneToken {
        authority,
        config,
        socket,
    } = one_token(
        dir.path(),
        "run/agent.sock",
        Some(Duration::from_secs(60)),
        "",
    );
    let mut agent = Agent::start(&config, &socket, dir.path(), &[]);
    agent.wait_healthy(Duration::from_secs(10));
    let served = |path: &str| {
        let body = agent.get_json(path)?;
        let token = body["access_token"].as_str()?.to_owned();
        Some((token, body["expires_in"].as_i64()?))
    };
    let (first, _) = served("/v1/token/api").expect("the agent's token");
    assert_eq!(authority.request_count(), 1);
    // The 60 s token has under 59 s left once the agent says 58 (whole
    // seconds, rounded down). Tokens issued from now on live an hour.
    wait_for(Duration::from_secs(30), || {
        served("/v1/token/api").filter(|(_, left)| *left <= 58)
    })
    .expect("the first token ages");
    authority.set_token_lifetime(Duration::from_secs(3600));

    let log = dir.path().join("child.log");
    let token_file = dir.path().join("tok/api.token");
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    let script = r#"
        echo "start $(date +%s) $ACCESS_TOKEN" >> "$LOG"
        trap 'echo "hup $(date +%s) $(cat "$ACCESS_TOKEN_FILE")" >> "$LOG"' HUP
        trap 'exit 0' TERM
        while :; do sleep 0.05; done
    "#;
    let mut exec = exec(
        &config,
        dir.path(),
        &log,
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "--min-validity",
            "59",
            "--poll",
            "0.1",
        ],
        script,
    );
    let exec_log = || std::fs::read_to_string(dir.path().join("exec.log")).unwrap_or_default();
    let started = wait_for(Duration::from_secs(30), || {
        lines(&log).into_iter().find(|l| l.starts_with("start "))
    })
    .unwrap_or_else(|| panic!("the child never started: {}", exec_log()));
    let fields: Vec<&str> = started.split(' ').collect();
    let (at, second) = (fields[1].parse::<u64>().unwrap(), fields[2].to_owned());
    // The first token would not have done (under 59 s left before exec
    // started); the one the child got was refreshed for it, and was valid
    // that long when the child started.
    let expires = |token: &str| {
        authority
            .validate_access_token(token)
            .map(|info| info.expires_at.as_secs())
            .unwrap_or_else(|e| panic!("not the authority's token: {e:?}"))
    };
    assert_ne!(
        second, first,
        "the child got the token with under 59 s left"
    );
    assert!(expires(&second).saturating_sub(at) >= 59);
    assert_eq!(authority.request_count(), 2, "one early refresh");

    // A reader that needs more than the child's token has left brings a
    // third token. exec's polls find it (the child is signalled with it
    // in the file); none of the polls before it asked the authority for
    // anything, the 59 s being there all along.
    wait_for(Duration::from_secs(30), || {
        served("/v1/token/api").filter(|(_, left)| *left <= 3598)
    })
    .expect("the second token ages");
    // (Early refreshes are rate limited: the agent may answer 503, retry
    // true, until the second token has been held long enough.)
    let (third, _) = wait_for(Duration::from_secs(60), || {
        served("/v1/token/api?min_validity=3599&wait_ms=3000")
    })
    .expect("a third token");
    assert_ne!(third, second);
    let hup = format!(" {third}");
    wait_for(Duration::from_secs(30), || {
        lines(&log)
            .iter()
            .any(|l| l.starts_with("hup ") && l.ends_with(&hup))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the third token never reached the child: {}", exec_log()));
    assert_eq!(authority.request_count(), 3, "no request from exec's polls");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), third);

    signal(&exec.0, Signal::TERM);
    let status = wait_exit(&mut exec.0, Duration::from_secs(20)).expect("exec exits");
    assert_eq!(status.code(), Some(0), "{}", exec_log());
    // The log has no token: exec logs none.
    for token in [&first, &second, &third] {
        assert!(!exec_log().contains(token.as_str()));
    }
}
