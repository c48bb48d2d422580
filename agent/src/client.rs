//! A minimal HTTP/1.0 client for the agent's Unix socket (one request per
//! connection, `Connection: close`), used by `freshtoken token`, `exec` and
//! `status`, and by the tests.
//!
//! It asks only an agent of this user: the socket must belong to this user
//! (or root), and so must the process that listens on it (its uid as the
//! kernel gives it, `SO_PEERCRED`, on Linux). Another user who creates the
//! socket first could otherwise hand out their own token.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// An answer: status code and body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// Why the agent could not be asked.
#[derive(Debug)]
pub enum AskError {
    /// Nobody listens on the socket (no agent runs).
    NoAgent(std::io::Error),
    /// The agent answered something that is not HTTP, or hung up.
    Broken(String),
    /// The socket, or the process listening on it, belongs to another
    /// user: not asked.
    Untrusted(String),
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AskError::NoAgent(e) => write!(f, "no agent is listening ({e})"),
            AskError::Broken(why) => write!(f, "the agent's answer is broken: {why}"),
            AskError::Untrusted(why) => write!(f, "not asking the socket: {why}"),
        }
    }
}

/// `GET path` on the agent at `socket`, within `timeout`.
pub fn get(socket: &Path, path: &str, timeout: Duration) -> Result<Answer, AskError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(socket).map_err(AskError::NoAgent)?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.file_type().is_socket() {
        return Err(AskError::Untrusted(format!(
            "{} is not a socket",
            socket.display()
        )));
    }
    if meta.uid() != me && meta.uid() != 0 {
        return Err(AskError::Untrusted(format!(
            "{} belongs to uid {}, not to this user (uid {me}) or root",
            socket.display(),
            meta.uid()
        )));
    }
    let mut stream = UnixStream::connect(socket).map_err(AskError::NoAgent)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let peer = rustix::net::sockopt::socket_peercred(&stream)
            .map_err(|e| AskError::Untrusted(format!("cannot learn who listens: {e}")))?;
        let uid = peer.uid.as_raw();
        if uid != me && uid != 0 {
            return Err(AskError::Untrusted(format!(
                "the process listening on {} (pid {}) runs as uid {uid}, not as this user (uid {me}) or root",
                socket.display(),
                peer.pid.as_raw_nonzero()
            )));
        }
    }
    let broken = |e: std::io::Error| AskError::Broken(e.to_string());
    stream.set_read_timeout(Some(timeout)).map_err(broken)?;
    stream.set_write_timeout(Some(timeout)).map_err(broken)?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(broken)?;
    let mut raw = Vec::new();
    stream
        .take(4 * 1024 * 1024)
        .read_to_end(&mut raw)
        .map_err(broken)?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> Result<Answer, AskError> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| AskError::Broken("no end of headers".into()))?;
    let head = std::str::from_utf8(&raw[..split])
        .map_err(|_| AskError::Broken("headers are not text".into()))?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| AskError::Broken("no status line".into()))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok(Answer { status, body })
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, AskError> {
    let mut out = Vec::new();
    loop {
        let end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| AskError::Broken("bad chunk".into()))?;
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or_else(|| AskError::Broken("bad chunk size".into()))?;
        body = &body[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err(AskError::Broken("cut-off chunk".into()));
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}
