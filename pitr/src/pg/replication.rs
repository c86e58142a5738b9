//! A physical replication connection: the client side of PostgreSQL's streaming replication
//! protocol, as `pg_receivewal` speaks it (protocol 3.0, "Streaming Replication Protocol" in the
//! PostgreSQL documentation; `src/backend/replication/walsender.c` and
//! `src/bin/pg_basebackup/receivelog.c` are the two ends).
//!
//! Why pitr speaks the protocol itself rather than driving `pg_receivewal`: the receiver must see
//! each byte as it arrives, to compress a segment while it is written and store it the moment its
//! last byte is durable (`pg_receivewal` pads its `.partial` file to the segment size, so its
//! progress cannot be read from the file); and a `pg_receivewal` refuses servers newer than its own
//! major, while one pitr serves PostgreSQL 13 to 18.
//!
//! What is spoken: the startup packet with `replication=true`; trust, password, md5 and
//! SCRAM-SHA-256 authentication (the password comes from the libpq environment or the password
//! file, never from an argument); simple queries (`IDENTIFY_SYSTEM`, `TIMELINE_HISTORY`,
//! `CREATE_REPLICATION_SLOT`, `DROP_REPLICATION_SLOT`); `START_REPLICATION` and its CopyBoth
//! stream of XLogData (`w`) and keepalive (`k`) messages, answered with standby status updates
//! (`r`). Over TCP, TLS as `sslmode` says (pg/tls.rs): the SSLRequest, then a rustls session
//! over the socket, blocking like the rest; a Unix socket never uses TLS, as with libpq.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use tokio_postgres::config::Host;
use tokio_postgres::Config;

use super::tls::{self, Attempt};
use super::ConnectionSettings;
use crate::error::{Error, Result};
use crate::wal::{Lsn, TimelineId};

/// The most read from the socket at once.
const READ_SIZE: usize = 1 << 20;

/// Seconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_OFFSET_SECS: u64 = 946_684_800;

/// The byte stream under a connection.
enum Socket {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Socket {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Unix(s) => s.set_read_timeout(timeout),
            Socket::Tcp(s) => s.set_read_timeout(timeout),
            Socket::Tls(s) => s.sock.set_read_timeout(timeout),
        }
    }

    /// Whether bytes wait in the TLS session already: the socket's descriptor may then have
    /// nothing more to read, so polling it would wait for the wrong thing.
    fn has_buffered(&mut self) -> bool {
        match self {
            Socket::Tls(s) => s
                .conn
                .process_new_packets()
                .map_or(true, |state| state.plaintext_bytes_to_read() > 0),
            _ => false,
        }
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Unix(s) => s.as_fd(),
            Socket::Tcp(s) => s.as_fd(),
            Socket::Tls(s) => s.sock.as_fd(),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => s.read(buf),
            Socket::Tcp(s) => s.read(buf),
            Socket::Tls(s) => {
                // One TLS read brings one record (16 KiB at most): take what else has arrived
                // already, as one read of a plain socket would, so that a burst still comes in
                // large reads (and so few fsyncs, see stream.rs).
                let mut n = s.read(buf)?;
                while n > 0 && n < buf.len() && readable_now(&s.sock) {
                    match s.read(&mut buf[n..]) {
                        Ok(0) => break,
                        Ok(more) => n += more,
                        // Reported by the next read, after the bytes already read are used.
                        Err(_) => break,
                    }
                }
                Ok(n)
            }
        }
    }
}

/// Whether `socket` has bytes to read now.
fn readable_now(socket: &TcpStream) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(socket, PollFlags::IN)];
    let now = Timespec { tv_sec: 0, tv_nsec: 0 };
    matches!(poll(&mut fds, Some(&now)), Ok(n) if n > 0)
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => s.write(buf),
            Socket::Tcp(s) => s.write(buf),
            Socket::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Socket::Unix(s) => s.flush(),
            Socket::Tcp(s) => s.flush(),
            Socket::Tls(s) => s.flush(),
        }
    }
}

/// How far a connection attempt got before it failed: what libpq's next attempt depends on.
enum Reached {
    /// The socket did not open: the next host is tried.
    Nothing,
    /// The TLS negotiation or handshake failed.
    Tls,
    /// The server answered the startup; `tls`: over a TLS session.
    Server { tls: bool },
}

/// What `IDENTIFY_SYSTEM` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// The server's current timeline.
    pub timeline: TimelineId,
    /// The server's current WAL flush position.
    pub flushed: Lsn,
}

/// Whether `synchronous_standby_names` (`[FIRST|ANY] n (name, ...)` or `name, ...`) names a
/// standby with `application_name` `application`: by name, compared without regard to case as
/// PostgreSQL does (`SyncRepGetCandidateStandbys` in syncrep.c), or by `*`.
pub fn names_synchronous_standby(setting: &str, application: &str) -> bool {
    let list = match (setting.find('('), setting.rfind(')')) {
        (Some(open), Some(close)) if open < close => &setting[open + 1..close],
        _ => setting,
    };
    list.split(',').any(|name| {
        let name = name.trim();
        let name = name
            .strip_prefix('"')
            .and_then(|n| n.strip_suffix('"'))
            .map_or_else(|| name.to_string(), |n| n.replace("\"\"", "\""));
        name == "*" || name.eq_ignore_ascii_case(application)
    })
}

/// One message of the replication stream.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamMessage {
    /// WAL bytes starting at `start`.
    XLogData {
        /// The LSN of the first byte.
        start: Lsn,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The server is alive; it wants a status update now when `reply_requested`.
    Keepalive {
        /// The server's WAL end.
        server_end: Lsn,
        /// A status update is due at once (else the server drops the connection after
        /// `wal_sender_timeout`).
        reply_requested: bool,
    },
    /// The streamed timeline ended (a promotion): the next one starts at `next_start`.
    EndOfTimeline {
        /// The timeline after the one streamed.
        next_timeline: TimelineId,
        /// Where it starts.
        next_start: Lsn,
    },
}

/// A replication connection to one server.
pub struct ReplicationConnection {
    socket: Socket,
    /// The `application_name` the server knows this connection by.
    application: String,
    /// Bytes read; those from `parsed` on are not yet parsed into messages.
    pending: Vec<u8>,
    parsed: usize,
    /// Where a read from the socket lands ([`READ_SIZE`] bytes, allocated once).
    read_buf: Vec<u8>,
    /// Where the connection goes, for messages.
    target: String,
}

/// A protocol message: its type byte and body.
struct Message {
    tag: u8,
    body: Vec<u8>,
}

impl ReplicationConnection {
    /// Connects for physical replication to the first host of `settings` that answers, and
    /// authenticates; TLS as `sslmode` says, with libpq's attempts in libpq's order.
    pub fn connect(settings: &ConnectionSettings) -> Result<ReplicationConnection> {
        let config = &settings.config;
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let tcp = config.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_)));
        let tls_config = match settings.tls.attempts(tcp).iter().any(|a| *a != Attempt::Plain) {
            true => Some(settings.tls.client_config()?),
            false => None,
        };
        let mut last_error = None;
        for host in config.get_hosts() {
            let attempts = settings.tls.attempts(matches!(host, Host::Tcp(_)));
            let mut failures = Vec::new();
            for attempt in attempts {
                let (error, reached) = match Self::open(host, port, *attempt, settings, tls_config.as_ref()) {
                    Ok(conn) => return Ok(conn),
                    Err(failed) => failed,
                };
                failures.push(error.to_string());
                // libpq's next attempt: `prefer` without TLS after a failed TLS session, `allow`
                // with TLS after the server refused the plain connection.
                let next = matches!(
                    (attempt, &reached),
                    (Attempt::TlsIfOffered, Reached::Tls | Reached::Server { tls: true })
                        | (Attempt::Plain, Reached::Server { .. })
                );
                if !next {
                    if matches!(reached, Reached::Nothing) {
                        break;
                    }
                    return Err(Error::Refused(failures.join("; then ")));
                }
            }
            last_error = Some(Error::Refused(failures.join("; then ")));
        }
        Err(last_error.unwrap_or_else(|| Error::InvalidInput("the connection settings name no host".into())))
    }

    /// One attempt on `host`: the socket, TLS as `attempt` says, the startup.
    fn open(
        host: &Host,
        port: u16,
        attempt: Attempt,
        settings: &ConnectionSettings,
        tls_config: Option<&Arc<ClientConfig>>,
    ) -> std::result::Result<ReplicationConnection, (Error, Reached)> {
        let (socket, target) = match host {
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                (UnixStream::connect(&path).map(Socket::Unix), path.display().to_string())
            }
            Host::Tcp(name) => (
                TcpStream::connect((name.as_str(), port)).map(|s| {
                    let _ = s.set_nodelay(true);
                    Socket::Tcp(s)
                }),
                format!("{name}:{port}"),
            ),
        };
        let socket = socket.map_err(|e| {
            (
                Error::Refused(format!("cannot connect to {target}: {e}")),
                Reached::Nothing,
            )
        })?;
        let socket = match (socket, host, tls_config) {
            (Socket::Tcp(tcp), Host::Tcp(name), Some(tls_config)) if attempt != Attempt::Plain => {
                negotiate_tls(tcp, name, attempt, settings.tls.mode, tls_config)
                    .map_err(|e| (Error::Refused(format!("{target}: {e}")), Reached::Tls))?
            }
            (socket, ..) => socket,
        };
        let tls = matches!(socket, Socket::Tls(_));
        let mut conn = ReplicationConnection {
            socket,
            application: String::new(),
            pending: Vec::new(),
            parsed: 0,
            read_buf: vec![0; READ_SIZE],
            target,
        };
        conn.start_up(&settings.config)
            .map_err(|e| (e, Reached::Server { tls }))?;
        Ok(conn)
    }

    /// Where the connection goes.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn start_up(&mut self, config: &Config) -> Result<()> {
        let user = config.get_user().unwrap_or("postgres");
        let application = config.get_application_name().unwrap_or("pitr");
        self.application = application.to_string();
        let mut buf = BytesMut::new();
        let params = [
            ("user", user),
            ("database", "replication"),
            ("replication", "true"),
            ("application_name", application),
        ];
        frontend::startup_message(params.iter().copied(), &mut buf).map_err(|e| self.io_error(e))?;
        self.send(&buf)?;
        let password = config.get_password();
        loop {
            let message = self.receive()?;
            match message.tag {
                b'R' => self.authenticate(&message.body, user, password)?,
                b'Z' => return Ok(()),
                b'E' => {
                    let error = self.server_error(&message.body);
                    return Err(match tls::refusal_hint(&error.to_string()) {
                        Some(hint) => Error::Refused(format!("{error}: {hint}")),
                        None => error,
                    });
                }
                _ => {} // ParameterStatus, BackendKeyData, notices
            }
        }
    }

    fn authenticate(&mut self, body: &[u8], user: &str, password: Option<&[u8]>) -> Result<()> {
        let code = be_u32(body, 0).ok_or_else(|| self.protocol("a short authentication request"))?;
        let need_password = || {
            password.ok_or_else(|| {
                Error::Refused(format!(
                    "{} asks for a password for user {user}: set PGPASSWORD in pitr's environment or add the \
                     connection to the password file (~/.pgpass or PGPASSFILE)",
                    self.target
                ))
            })
        };
        let mut buf = BytesMut::new();
        match code {
            0 => return Ok(()),
            3 => frontend::password_message(need_password()?, &mut buf),
            5 => {
                let salt: [u8; 4] = body
                    .get(4..8)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| self.protocol("an md5 request without salt"))?;
                let hash = postgres_protocol::authentication::md5_hash(user.as_bytes(), need_password()?, salt);
                frontend::password_message(hash.as_bytes(), &mut buf)
            }
            10 => return self.scram(body, need_password()?),
            other => {
                return Err(Error::Refused(format!(
                    "{} asks for authentication method {other}, which pitr does not speak: use trust, peer, \
                     password, md5 or scram-sha-256 for pitr's replication connection in pg_hba.conf",
                    self.target
                )))
            }
        }
        .map_err(|e| self.io_error(e))?;
        self.send(&buf)
    }

    fn scram(&mut self, mechanisms: &[u8], password: &[u8]) -> Result<()> {
        let offered = mechanisms[4..]
            .split(|b| *b == 0)
            .any(|m| m == SCRAM_SHA_256.as_bytes());
        if !offered {
            return Err(Error::Refused(format!(
                "{} offers no SASL mechanism pitr speaks (it speaks SCRAM-SHA-256 without channel binding)",
                self.target
            )));
        }
        let mut scram = ScramSha256::new(password, ChannelBinding::unsupported());
        let mut buf = BytesMut::new();
        frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut buf).map_err(|e| self.io_error(e))?;
        self.send(&buf)?;
        let continued = self.expect_authentication(11)?;
        scram.update(&continued).map_err(|e| self.auth_failed(e))?;
        let mut buf = BytesMut::new();
        frontend::sasl_response(scram.message(), &mut buf).map_err(|e| self.io_error(e))?;
        self.send(&buf)?;
        let last = self.expect_authentication(12)?;
        scram.finish(&last).map_err(|e| self.auth_failed(e))
    }

    /// Reads an authentication message of `code` and returns its data.
    fn expect_authentication(&mut self, code: u32) -> Result<Vec<u8>> {
        let message = self.receive()?;
        match message.tag {
            b'R' if be_u32(&message.body, 0) == Some(code) => Ok(message.body[4..].to_vec()),
            b'E' => Err(self.server_error(&message.body)),
            _ => Err(self.protocol("an unexpected message during SCRAM authentication")),
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub fn identify_system(&mut self) -> Result<SystemIdentity> {
        let rows = self.simple_query("IDENTIFY_SYSTEM")?;
        let row = rows
            .first()
            .ok_or_else(|| self.protocol("IDENTIFY_SYSTEM returned no row"))?;
        let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let parsed = (
            field(0).parse::<u64>().ok(),
            field(1).parse::<TimelineId>().ok(),
            field(2).parse::<Lsn>().ok(),
        );
        match parsed {
            (Some(system_identifier), Some(timeline), Some(flushed)) => Ok(SystemIdentity {
                system_identifier,
                timeline,
                flushed,
            }),
            _ => Err(self.protocol("IDENTIFY_SYSTEM returned fields pitr cannot read")),
        }
    }

    /// Whether the server names this connection in `synchronous_standby_names` (read with the
    /// replication command `SHOW`), so that its commits wait for the flush positions it reports.
    pub fn is_synchronous_standby(&mut self) -> Result<bool> {
        let rows = self.simple_query("SHOW synchronous_standby_names")?;
        let setting = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_default();
        Ok(names_synchronous_standby(&setting, &self.application))
    }

    /// `TIMELINE_HISTORY tli`: the history file's name and content.
    pub fn timeline_history(&mut self, timeline: TimelineId) -> Result<(String, Vec<u8>)> {
        let rows = self.simple_query_bytes(&format!("TIMELINE_HISTORY {timeline}"))?;
        match rows.first().map(|r| r.as_slice()) {
            Some([Some(name), Some(content)]) => Ok((String::from_utf8_lossy(name).into_owned(), content.clone())),
            _ => Err(self.protocol("TIMELINE_HISTORY returned fields pitr cannot read")),
        }
    }

    /// `CREATE_REPLICATION_SLOT name PHYSICAL RESERVE_WAL`: the slot keeps WAL from now on.
    /// `name` must be a valid slot name (checked by the caller).
    pub fn create_physical_slot(&mut self, name: &str) -> Result<()> {
        self.simple_query(&format!("CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL"))
            .map(drop)
    }

    /// `DROP_REPLICATION_SLOT name`.
    pub fn drop_slot(&mut self, name: &str) -> Result<()> {
        self.simple_query(&format!("DROP_REPLICATION_SLOT {name}")).map(drop)
    }

    /// `START_REPLICATION SLOT slot PHYSICAL start TIMELINE tli`: from here on, read with
    /// [`ReplicationConnection::next_message`] and answer with
    /// [`ReplicationConnection::send_status`].
    pub fn start_replication(&mut self, slot: &str, start: Lsn, timeline: TimelineId) -> Result<()> {
        let mut buf = BytesMut::new();
        frontend::query(
            &format!("START_REPLICATION SLOT {slot} PHYSICAL {start} TIMELINE {timeline}"),
            &mut buf,
        )
        .map_err(|e| self.io_error(e))?;
        self.send(&buf)?;
        loop {
            let message = self.receive()?;
            match message.tag {
                b'W' => return Ok(()),
                b'E' => {
                    let error = self.server_error(&message.body);
                    self.drain_until_ready()?;
                    return Err(error);
                }
                b'N' => {}
                _ => return Err(self.protocol("an unexpected answer to START_REPLICATION")),
            }
        }
    }

    /// The next message of the stream, or `None` when nothing arrived within `wait`, or when
    /// `wake` (a descriptor the caller also waits on) became readable first.
    pub fn next_message(&mut self, wait: Duration, wake: Option<BorrowedFd<'_>>) -> Result<Option<StreamMessage>> {
        let Some(message) = self.receive_within(wait, wake)? else {
            return Ok(None);
        };
        match message.tag {
            b'd' => self.copy_data(&message.body).map(Some),
            b'c' => self.end_of_timeline().map(Some),
            b'E' => Err(self.server_error(&message.body)),
            b'N' => Ok(None),
            _ => Err(self.protocol("an unexpected message in the replication stream")),
        }
    }

    fn copy_data(&self, body: &[u8]) -> Result<StreamMessage> {
        match body.first() {
            Some(b'w') if body.len() >= 25 => Ok(StreamMessage::XLogData {
                start: Lsn(be_u64(body, 1).expect("checked length")),
                data: body[25..].to_vec(),
            }),
            Some(b'k') if body.len() >= 18 => Ok(StreamMessage::Keepalive {
                server_end: Lsn(be_u64(body, 1).expect("checked length")),
                reply_requested: body[17] != 0,
            }),
            _ => Err(self.protocol("a replication message pitr cannot read")),
        }
    }

    /// The server ended the timeline with CopyDone: answer with CopyDone, then read the next
    /// timeline and where it starts.
    fn end_of_timeline(&mut self) -> Result<StreamMessage> {
        let mut buf = BytesMut::new();
        frontend::copy_done(&mut buf);
        self.send(&buf)?;
        let rows = self.rows_until_ready()?;
        let row = rows
            .first()
            .ok_or_else(|| self.protocol("the end of a timeline without the next"))?;
        let field = |i: usize| {
            row.get(i)
                .cloned()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        match (
            field(0).and_then(|t| t.parse().ok()),
            field(1).and_then(|l| l.parse().ok()),
        ) {
            (Some(next_timeline), Some(next_start)) => Ok(StreamMessage::EndOfTimeline {
                next_timeline,
                next_start,
            }),
            _ => Err(self.protocol("the end of a timeline with fields pitr cannot read")),
        }
    }

    /// Sends a standby status update: everything before `written` is received, before `flushed`
    /// durable (the slot may release the WAL before it), nothing is applied.
    pub fn send_status(&mut self, written: Lsn, flushed: Lsn, reply_requested: bool) -> Result<()> {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64 - (PG_EPOCH_OFFSET_SECS as i64) * 1_000_000)
            .unwrap_or(0);
        let mut data = Vec::with_capacity(34);
        data.push(b'r');
        data.extend_from_slice(&written.0.to_be_bytes());
        data.extend_from_slice(&flushed.0.to_be_bytes());
        data.extend_from_slice(&0u64.to_be_bytes());
        data.extend_from_slice(&micros.to_be_bytes());
        data.push(u8::from(reply_requested));
        let mut buf = BytesMut::new();
        frontend::CopyData::new(&data[..])
            .map_err(|e| self.io_error(e))?
            .write(&mut buf);
        self.send(&buf)
    }

    fn simple_query(&mut self, query: &str) -> Result<Vec<Vec<Option<String>>>> {
        let rows = self.simple_query_bytes(query)?;
        Ok(rows
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|f| f.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .collect()
            })
            .collect())
    }

    fn simple_query_bytes(&mut self, query: &str) -> Result<Vec<Vec<Option<Vec<u8>>>>> {
        let mut buf = BytesMut::new();
        frontend::query(query, &mut buf).map_err(|e| self.io_error(e))?;
        self.send(&buf)?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let message = self.receive()?;
            match message.tag {
                b'D' => rows.push(self.data_row(&message.body)?),
                b'E' => error = Some(self.server_error(&message.body)),
                b'Z' => return error.map_or(Ok(rows), Err),
                _ => {} // RowDescription, CommandComplete, notices
            }
        }
    }

    /// Reads result rows up to ReadyForQuery (after the end of a timeline).
    fn rows_until_ready(&mut self) -> Result<Vec<Vec<Option<Vec<u8>>>>> {
        let mut rows = Vec::new();
        loop {
            let message = self.receive()?;
            match message.tag {
                b'D' => rows.push(self.data_row(&message.body)?),
                b'E' => {
                    let error = self.server_error(&message.body);
                    self.drain_until_ready()?;
                    return Err(error);
                }
                b'Z' => return Ok(rows),
                _ => {}
            }
        }
    }

    fn drain_until_ready(&mut self) -> Result<()> {
        while self.receive()?.tag != b'Z' {}
        Ok(())
    }

    fn data_row(&self, body: &[u8]) -> Result<Vec<Option<Vec<u8>>>> {
        let bad = || self.protocol("a data row pitr cannot read");
        let count = body
            .get(..2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(bad)?;
        let mut at = 2;
        let mut fields = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let len = be_u32(body, at).ok_or_else(bad)? as i32;
            at += 4;
            if len < 0 {
                fields.push(None);
                continue;
            }
            let field = body.get(at..at + len as usize).ok_or_else(bad)?;
            fields.push(Some(field.to_vec()));
            at += len as usize;
        }
        Ok(fields)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.socket
            .write_all(bytes)
            .and_then(|()| self.socket.flush())
            .map_err(|e| self.io_error(e))
    }

    fn receive(&mut self) -> Result<Message> {
        loop {
            if let Some(message) = self.receive_within(Duration::from_secs(3600), None)? {
                return Ok(message);
            }
        }
    }

    /// The next whole message, or `None` when none arrived within `wait`.
    fn receive_within(&mut self, wait: Duration, wake: Option<BorrowedFd<'_>>) -> Result<Option<Message>> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Some(message) = self.parse_pending()? {
                return Ok(Some(message));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            if let Some(wake) = wake {
                if self.woken_first(wake, left)? {
                    return Ok(None);
                }
            }
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| self.io_error(e))?;
            // Room for up to a megabyte at once: under a burst, one read (and so one fsync of what
            // it brought, see stream.rs) covers many XLogData messages.
            self.pending.drain(..self.parsed);
            self.parsed = 0;
            match self.socket.read(&mut self.read_buf) {
                Ok(0) => {
                    return Err(Error::Refused(format!(
                        "{} closed the replication connection",
                        self.target
                    )))
                }
                Ok(n) => self.pending.extend_from_slice(&self.read_buf[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    /// Waits at most `left` until the socket or `wake` is readable: `true` when `wake` is and the
    /// socket is not.
    fn woken_first(&mut self, wake: BorrowedFd<'_>, left: Duration) -> Result<bool> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        if self.socket.has_buffered() {
            return Ok(false);
        }
        let mut fds = [
            PollFd::new(&self.socket, PollFlags::IN),
            PollFd::from_borrowed_fd(wake, PollFlags::IN),
        ];
        let timeout = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: 3600,
            tv_nsec: 0,
        });
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(self.io_error(e.into())),
        }
        Ok(fds[0].revents().is_empty() && !fds[1].revents().is_empty())
    }

    fn parse_pending(&mut self) -> Result<Option<Message>> {
        let unread = &self.pending[self.parsed..];
        if unread.len() < 5 {
            return Ok(None);
        }
        let len = be_u32(unread, 1).expect("5 bytes") as usize;
        if !(4..=(1 << 30)).contains(&len) {
            return Err(self.protocol("a message of impossible length"));
        }
        if unread.len() < 1 + len {
            return Ok(None);
        }
        let message = Message {
            tag: unread[0],
            body: unread[5..1 + len].to_vec(),
        };
        self.parsed += 1 + len;
        Ok(Some(message))
    }

    fn server_error(&self, body: &[u8]) -> Error {
        let mut message = String::new();
        let mut code = String::new();
        for field in body.split(|b| *b == 0) {
            match field.split_first() {
                Some((b'M', text)) => message = String::from_utf8_lossy(text).into_owned(),
                Some((b'C', text)) => code = String::from_utf8_lossy(text).into_owned(),
                _ => {}
            }
        }
        Error::Refused(format!("{} answered: {message} (SQLSTATE {code})", self.target))
    }

    fn protocol(&self, what: &str) -> Error {
        Error::Refused(format!("{} sent {what}", self.target))
    }

    fn io_error(&self, e: io::Error) -> Error {
        Error::Refused(format!("replication connection to {}: {e}", self.target))
    }

    fn auth_failed(&self, e: io::Error) -> Error {
        Error::Refused(format!("authentication with {} failed: {e}", self.target))
    }
}

impl Drop for ReplicationConnection {
    fn drop(&mut self) {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        let _ = self.socket.write_all(&buf);
        if let Socket::Tls(s) = &mut self.socket {
            s.conn.send_close_notify();
            let _ = s.conn.complete_io(&mut s.sock);
        }
    }
}

/// The SSLRequest on `tcp` (protocol: "SSL Session Encryption"), then, when the server answers
/// `S`, the TLS handshake for `host`. A server that answers `N` gets the plain socket back when
/// `attempt` allows it.
fn negotiate_tls(
    mut tcp: TcpStream,
    host: &str,
    attempt: Attempt,
    mode: tls::SslMode,
    config: &Arc<ClientConfig>,
) -> std::result::Result<Socket, String> {
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf)
        .map_err(|e| format!("cannot send the TLS request: {e}"))?;
    let mut answer = [0u8];
    tcp.read_exact(&mut answer)
        .map_err(|e| format!("no answer to the TLS request: {e}"))?;
    match answer[0] {
        b'S' => {}
        b'N' if attempt == Attempt::TlsIfOffered => return Ok(Socket::Tcp(tcp)),
        b'N' => return Err(tls::not_offered(mode)),
        _ => return Err("the server answered the TLS request with neither S nor N".into()),
    }
    let name = tls::server_name(host).map_err(|e| e.to_string())?;
    let session = ClientConnection::new(config.clone(), name).map_err(|e| tls::explain_rustls(&e, mode))?;
    let mut stream = StreamOwned::new(session, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| tls::explain(&e, mode).unwrap_or_else(|| format!("the TLS handshake failed: {e}")))?;
    }
    Ok(Socket::Tls(Box::new(stream)))
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
}

fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at + 8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

/// Checks a replication slot name as PostgreSQL does (`ReplicationSlotValidateName`): 1 to 63
/// characters of lower-case letters, digits and underscores. It is spliced into replication
/// commands, so nothing else may pass.
pub fn check_slot_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() < 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "'{name}' is not a replication slot name: use 1 to 63 lower-case letters, digits and underscores"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synchronous_standby_names_are_read_as_postgresql_reads_them() {
        for (setting, named) in [
            ("pitr", true),
            ("PITR", true),
            ("other, pitr", true),
            ("FIRST 1 (other, pitr)", true),
            ("ANY 2 (a, \"pitr\", b)", true),
            ("2 (a, b)", false),
            ("*", true),
            ("", false),
            ("pitr_2", false),
            ("\"pi,tr\"", false),
        ] {
            assert_eq!(names_synchronous_standby(setting, "pitr"), named, "{setting:?}");
        }
    }

    #[test]
    fn slot_names_are_checked_as_postgresql_does() {
        for good in ["pitr", "pitr_1", "a"] {
            check_slot_name(good).unwrap();
        }
        for bad in ["", "Pitr", "pitr-1", "pitr; DROP", &"a".repeat(64)] {
            assert!(check_slot_name(bad).is_err(), "{bad}");
        }
    }
}
