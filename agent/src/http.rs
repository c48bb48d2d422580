//! The agent's HTTP listener, on the Unix socket and the loopback TCP port.
//!
//! One request per connection (`Connection: close`), each connection on
//! its own thread, and every connection bounded in time: the request head
//! must arrive within [`REQUEST_DEADLINE`] and the answer be taken within
//! [`WRITE_DEADLINE`], else the connection is dropped. So a client that
//! sends slowly, pipelines and never reads, or opens connections and sits
//! on them, holds at most its own threads, never the listener: at most
//! [`MAX_CONNECTIONS`] connections are served at once, and one over that is
//! closed at once. The request head is parsed by `httparse`.

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a client may take to send its request head.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long a client may take to take the answer.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; one more is closed without an answer.
pub const MAX_CONNECTIONS: usize = 64;
/// The largest request head read.
const MAX_HEAD: usize = 16 * 1024;
/// The most headers a request may have.
const MAX_HEADERS: usize = 64;

/// A request: its method, its path, its query and its headers.
#[derive(Debug)]
pub struct Request {
    /// `GET`, ...
    pub method: String,
    /// The path, without `?query`.
    pub path: String,
    /// What follows `?`, as sent (empty without one).
    query: String,
    headers: Vec<(String, String)>,
}

impl Request {
    /// The value of the header `name` (case-insensitive), if it was sent
    /// once and is text. A header sent twice counts as absent.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut found = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let first = found.next()?;
        found.next().is_none().then_some(first.1.as_str())
    }

    /// The value of the query parameter `name`, as sent (not
    /// percent-decoded: the agent's parameters are numbers). A parameter
    /// sent twice counts as absent, as a header does.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        let mut found = self
            .query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .filter(|(n, _)| *n == name);
        let first = found.next()?;
        found.next().is_none().then_some(first.1)
    }

    /// Whether the header `name` was sent at all.
    pub fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
}

/// An answer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// `body` as JSON, with a newline.
    pub fn json(status: u16, body: &serde_json::Value) -> Reply {
        let mut text = body.to_string();
        text.push('\n');
        Reply {
            status,
            content_type: "application/json",
            body: text.into_bytes(),
        }
    }

    /// `body` as plain text of `content_type`.
    pub fn text(status: u16, content_type: &'static str, body: String) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into_bytes(),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// What answers requests.
pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    /// The Unix socket at this path.
    Unix(UnixListener, PathBuf),
    /// A TCP port.
    Tcp(TcpListener),
}

/// A connection, whatever the socket.
trait Conn: Read + Write + Send {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()>;
}

impl Conn for std::os::unix::net::UnixStream {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(read)?;
        self.set_write_timeout(write)
    }
}

impl Conn for std::net::TcpStream {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(read)?;
        self.set_write_timeout(write)
    }
}

impl Listener {
    fn accept(&self) -> io::Result<Box<dyn Conn>> {
        Ok(match self {
            Listener::Unix(l, _) => Box::new(l.accept()?.0),
            Listener::Tcp(l) => Box::new(l.accept()?.0),
        })
    }

    /// Connects to the listener, so that a blocked `accept` returns.
    fn wake(&self) {
        match self {
            Listener::Unix(_, path) => drop(std::os::unix::net::UnixStream::connect(path)),
            Listener::Tcp(l) => {
                if let Ok(addr) = l.local_addr() {
                    drop(std::net::TcpStream::connect_timeout(
                        &addr,
                        Duration::from_secs(1),
                    ));
                }
            }
        }
    }
}

/// A running listener; [`Server::stop`] stops it.
pub struct Server {
    listener: Arc<Listener>,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Serves `listener` with `handler` on a thread of its own.
    pub fn start(listener: Listener, handler: Handler) -> io::Result<Server> {
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (listener, stop) = (listener.clone(), stop.clone());
            std::thread::Builder::new()
                .name("freshtoken-listener".into())
                .spawn(move || accept_loop(&listener, &handler, &stop))?;
        }
        Ok(Server { listener, stop })
    }

    /// Stops accepting; connections being served finish within their
    /// deadlines. The accepting thread is woken (by a connection, which
    /// may be refused, e.g. when the socket was handed to another user) and
    /// not waited for: it answers no one any more.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.listener.wake();
    }
}

/// Decrements the count of connections being served when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(listener: &Listener, handler: &Handler, stop: &AtomicBool) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut failures = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let conn = match listener.accept() {
            Ok(c) => {
                failures = 0;
                c
            }
            Err(e) => {
                // EMFILE and the like: wait a little rather than spin.
                failures += 1;
                if failures == 1 {
                    tracing::warn!("accepting a connection: {e}");
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::debug!("too many connections: one closed");
            continue;
        }
        let slot = Slot(active.clone());
        let handler = handler.clone();
        let spawned = std::thread::Builder::new()
            .name("freshtoken-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve(conn, &handler);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start a connection thread: {e}");
        }
    }
}

/// Reads one request, answers it, closes.
fn serve(mut conn: Box<dyn Conn>, handler: &Handler) {
    let reply = match read_request(&mut *conn) {
        Ok(request) => {
            if request.method == "GET" {
                handler(&request)
            } else {
                Reply::json(405, &serde_json::json!({"error": "only GET"}))
            }
        }
        Err(ReadError::Bad(status, why)) => Reply::json(status, &serde_json::json!({"error": why})),
        // Timed out or gone: nobody to answer.
        Err(ReadError::Io) => return,
    };
    let _ = write_all(&mut *conn, &reply.to_bytes());
}

enum ReadError {
    Bad(u16, &'static str),
    Io,
}

fn read_request(conn: &mut dyn Conn) -> Result<Request, ReadError> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Io);
        }
        conn.set_timeouts(Some(left), None)
            .map_err(|_| ReadError::Io)?;
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => return Err(ReadError::Io),
            Ok(n) => n,
        };
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let target = parsed.path.unwrap_or("");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                return Ok(Request {
                    method: parsed.method.unwrap_or("").to_owned(),
                    path: path.to_owned(),
                    query: query.to_owned(),
                    headers: parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                });
            }
            Ok(httparse::Status::Partial) if head.len() >= MAX_HEAD => {
                return Err(ReadError::Bad(431, "the request head is too large"))
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ReadError::Bad(431, "too many headers"))
            }
            Err(_) => return Err(ReadError::Bad(400, "not an HTTP request")),
        }
    }
}

fn write_all(conn: &mut dyn Conn, mut bytes: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + WRITE_DEADLINE;
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        conn.set_timeouts(None, Some(left))?;
        match conn.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_sent_twice_counts_as_absent() {
        let request = Request {
            method: "GET".into(),
            path: "/".into(),
            query: "min_validity=60&wait_ms=5&wait_ms=6&flag".into(),
            headers: vec![
                ("Host".into(), "a".into()),
                ("host".into(), "b".into()),
                ("X".into(), "1".into()),
            ],
        };
        assert_eq!(request.header("host"), None);
        assert!(request.has_header("HOST"));
        assert_eq!(request.header("x"), Some("1"));
        assert_eq!(request.query_param("min_validity"), Some("60"));
        assert_eq!(request.query_param("wait_ms"), None, "sent twice");
        assert_eq!(request.query_param("flag"), None, "no value");
        assert_eq!(request.query_param("other"), None);
    }
}
