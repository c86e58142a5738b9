//! The daemon's HTTP listener: `GET /` (the status page), `GET /metrics` and `GET /health`, 404
//! otherwise; HTTP/1.1 with `Connection: close`. The status page goes out with a
//! Content-Security-Policy that lets it load nothing and run no script. It is small on purpose, and bounded in everything a client controls:
//! a request head (request line and headers) of at most [`MAX_HEAD`] bytes (431 beyond), at most
//! [`MAX_CONNECTIONS`] connections served at once (503 beyond), and [`DEADLINE`] for a client to
//! send its request head (408 after it, so that a client trickling bytes holds a slot for no
//! longer). A request body is never read.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::metrics::Metrics;
use crate::error::{Error, Result};
use crate::watch::StopFlags;

/// The most a request line and its headers may take; browsers and Prometheus send far less.
pub const MAX_HEAD: usize = 16 * 1024;

/// Connections served at once; more are answered 503 at once and closed.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a client may take to send its request head.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// How long the listener sleeps when no connection waits (it also looks for SIGTERM then).
const ACCEPT_POLL: Duration = Duration::from_millis(50);

/// How long a refused client gets to read its answer before the connection closes.
const LINGER: Duration = Duration::from_millis(200);

/// Binds `address`, or says why not.
pub fn listen(address: &str) -> Result<TcpListener> {
    let refused = |e: io::Error| {
        Error::Refused(format!(
            "cannot listen on {address}: {e}; set `listen` to a free address"
        ))
    };
    let listener = TcpListener::bind(address).map_err(refused)?;
    listener.set_nonblocking(true).map_err(refused)?;
    Ok(listener)
}

/// What the status page is sent with: it may load nothing and run no script; it is not cached.
const PAGE_HEADERS: &str = "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; img-src data:\r\n\
                            X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n";

/// What the listener answers with.
pub struct Routes<'a> {
    /// `/metrics` and `/health`.
    pub metrics: &'a Metrics,
    /// `/`: the status page.
    pub page: &'a (dyn Fn() -> String + Sync),
}

/// Serves `listener` until terminated; each connection on a thread of its own.
pub fn serve(listener: &TcpListener, routes: &Routes, flags: &StopFlags) {
    let active = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        while !flags.terminate.load(Ordering::SeqCst) {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(ACCEPT_POLL);
                    continue;
                }
                Err(_) => continue,
            };
            if stream.set_nonblocking(false).is_err() {
                continue;
            }
            if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::SeqCst);
                busy(stream);
                continue;
            }
            let active = &active;
            scope.spawn(move || {
                answer(stream, routes);
                active.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
}

/// Reads one request head and answers it.
fn answer(mut stream: TcpStream, routes: &Routes) {
    let head = match read_head(&mut stream, Instant::now() + DEADLINE) {
        Ok(head) => head,
        Err(Some((status, body))) => return refuse(stream, status, body),
        Err(None) => return,
    };
    let request_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let request_line = String::from_utf8_lossy(request_line);
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return refuse(stream, 400, "bad request\n");
    };
    if method != "GET" {
        return refuse(stream, 405, "only GET: try /, /metrics or /health\n");
    }
    let (status, content_type, headers, body) = match target.split('?').next().unwrap_or_default() {
        "/" => (200, "text/html; charset=utf-8", PAGE_HEADERS, (routes.page)()),
        "/metrics" => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            "",
            routes.metrics.render(),
        ),
        "/health" => (200, "application/json", "", routes.metrics.health()),
        _ => (
            404,
            "text/plain",
            "",
            "not found: try /, /metrics or /health\n".to_string(),
        ),
    };
    let _ = respond(&mut stream, status, content_type, headers, &body);
}

/// Answers 503 on the listener's thread, without reading anything: it must not wait.
fn busy(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let _ = respond(
        &mut stream,
        503,
        "text/plain",
        "",
        "busy: too many connections at once; try again\n",
    );
}

/// The request head, up to its blank line. `Err(Some(..))`: the answer to a client that sent too
/// much or too slowly; `Err(None)`: the client went away.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> std::result::Result<Vec<u8>, Option<(u16, &'static str)>> {
    let too_slow = (408, "request timeout: send the request head at once\n");
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let end = head_end(&head);
        if end.unwrap_or(head.len()) > MAX_HEAD {
            return Err(Some((431, "request header fields too large\n")));
        }
        if let Some(end) = end {
            head.truncate(end);
            return Ok(head);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(Some(too_slow));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(None),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(Some(too_slow))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(None),
        }
    }
}

/// Where the head ends: after the first empty line (CRLF or bare LF).
fn head_end(head: &[u8]) -> Option<usize> {
    let crlf = head.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = head.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    crlf.into_iter().chain(lf).min()
}

/// Answers with an error and closes, after giving the client [`LINGER`] to read the answer:
/// what it still sends meanwhile is read and dropped (a bounded amount), so that closing does
/// not reset the connection under the answer.
fn refuse(mut stream: TcpStream, status: u16, body: &str) {
    let _ = stream.set_write_timeout(Some(LINGER));
    if respond(&mut stream, status, "text/plain", "", body).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let (mut chunk, mut drained) = ([0u8; 4096], 0);
    while drained < MAX_HEAD * 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// Writes the answer; `headers` are further header lines, each ending in CRLF.
fn respond(stream: &mut TcpStream, status: u16, content_type: &str, headers: &str, body: &str) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let allow = if status == 405 { "Allow: GET\r\n" } else { "" };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{headers}{allow}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_the_first_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
