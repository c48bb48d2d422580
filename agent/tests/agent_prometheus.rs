//! A real Prometheus server (Debian's `prometheus`, installed by
//! `.ci/setup-prometheus.sh`) scrapes the agent's `/metrics` over loopback
//! TCP; the expiry gauge is read back through Prometheus' query API, and two
//! readings some seconds apart differ by about that many seconds.

mod support;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use freshtoken::testing::LocalAuthority;
use support::{cc_token, free_port, wait_for, write_file, Agent};

/// `GET path` over HTTP/1.0 on loopback: (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One instant query: the first series' value, if any.
fn query(port: u16, promql: &str) -> Option<f64> {
    let (status, body) = http_get(port, &format!("/api/v1/query?query={}", encode(promql)))?;
    if status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_the_expiry_gauge() {
    let authority = LocalAuthority::builder()
        .client("svc", "s3cret-value")
        // Long enough that no refresh happens during the test.
        .token_lifetime(Duration::from_secs(600))
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(&dir.path().join("svc.secret"), "s3cret-value", 0o600);
    let socket = dir.path().join("agent.sock");
    let agent_port = free_port();
    let config = write_file(
        &dir.path().join("agent.toml"),
        &format!(
            "[agent]\nsocket = \"{}\"\nlisten = \"127.0.0.1:{agent_port}\"\nheartbeat_secs = 1\n\n{}",
            socket.display(),
            cc_token("api", &authority.token_url(), "svc", &secret, "")
        ),
        0o600,
    );
    let mut agent = Agent::start(&config, &socket, dir.path(), &[]);
    agent.wait_healthy(Duration::from_secs(10));
    let (status, text) = http_get(agent_port, "/metrics").expect("/metrics over TCP");
    assert_eq!(status, 200);
    assert!(
        text.contains("freshtoken_token_expires_in_seconds{refresher=\"api\"}"),
        "{text}"
    );
    assert!(!text.contains("s3cret-value"));

    // Prometheus, scraping the agent every second.
    let prom_port = free_port();
    let prom_config = write_file(
        &dir.path().join("prometheus.yml"),
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: freshtoken\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n"
        ),
        0o600,
    );
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", prom_config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start prometheus ({e}): run .ci/setup-prometheus.sh (Debian's prometheus package)")
        });
    let _prometheus = Prometheus(child);
    let prom_log =
        || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    wait_for(Duration::from_secs(30), || {
        http_get(prom_port, "/-/ready").filter(|(s, _)| *s == 200)
    })
    .unwrap_or_else(|| panic!("prometheus never got ready: {}", prom_log()));

    let expires_in = "freshtoken_token_expires_in_seconds{refresher=\"api\",job=\"freshtoken\"}";
    let sample = || {
        let v = query(prom_port, expires_in)?;
        let t = query(prom_port, &format!("timestamp({expires_in})"))?;
        Some((v, t))
    };
    let (v1, t1) = wait_for(Duration::from_secs(20), sample)
        .unwrap_or_else(|| panic!("no sample scraped: {}", prom_log()));
    // A few scrapes later.
    let (v2, t2) = wait_for(Duration::from_secs(20), || {
        sample().filter(|(_, t)| *t >= t1 + 4.0)
    })
    .unwrap_or_else(|| panic!("no later sample: {}", prom_log()));
    let expires_at = query(
        prom_port,
        "freshtoken_token_expires_at_timestamp_seconds{refresher=\"api\",job=\"freshtoken\"}",
    )
    .expect("the expires_at gauge");
    let up = query(prom_port, "up{job=\"freshtoken\"}").expect("the up series");
    eprintln!(
        "expires_in {v1:.1} s at {t1:.1}, {v2:.1} s at {t2:.1}: fell {:.1} s in {:.1} s; expires_at {expires_at:.0}",
        v1 - v2,
        t2 - t1
    );
    assert_eq!(up, 1.0);
    // One token throughout: its expiry did not move, and the countdown
    // fell while the clock moved on (updated at each 1 s heartbeat).
    assert_eq!(authority.request_count(), 1, "a refresh during the test");
    assert!(v2 < v1, "the expiry gauge did not fall: {v1} then {v2}");
    assert!(
        v1 - v2 <= (t2 - t1) + 3.0,
        "fell more than the time that passed"
    );
    assert!(
        v1 - v2 >= (t2 - t1) - 3.0,
        "fell much less than the time that passed"
    );
    assert!(
        expires_at > t2 && expires_at < t2 + 601.0,
        "{expires_at} vs {t2}"
    );

    agent.signal(support::Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(10)).unwrap().success());
}
