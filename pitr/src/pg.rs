//! Everything that talks to a running PostgreSQL server: the connection (libpq environment,
//! conninfo, password file, TLS), server checks, and the low-level backup API.

mod connect;
pub mod ctl;
pub mod page;
pub mod replication;
pub mod tls;
mod version;

pub use connect::{connection_settings, parse_conninfo, ConnectionSettings};
pub use version::{BackupApi, DatabaseRecords, PgVersion};

use serde::Serialize;
use tokio_postgres::config::{Host, SslMode as TokioSslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, NoTls, Socket};

use self::tls::{Attempt, MakeRustls};

use crate::error::{Error, Result};
use crate::wal::Lsn;

/// A connection to one server, held for as long as the work needs it (a base backup is aborted
/// by the server when the connection that started it closes).
pub struct Server {
    client: Client,
    /// The server's major version.
    version: PgVersion,
    /// Where the connection goes, for messages.
    target: String,
    /// How it was made: for connections to the server's other databases.
    settings: ConnectionSettings,
}

/// What `pg_stat_archiver` says about archive_command's failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiverStatus {
    /// Failures since the statistics were reset.
    pub failed_count: i64,
    /// The file of the last failure.
    pub last_failed_wal: Option<String>,
    /// The last failure is newer than the last success: archiving fails now.
    pub failing: bool,
}

/// What `pg_backup_stop` returns.
#[derive(Debug, Clone)]
pub struct BackupStop {
    /// The backup's end LSN (an end pointer).
    pub lsn: Lsn,
    /// The `backup_label` text, to be written byte for byte.
    pub label_file: String,
    /// The `tablespace_map` text; empty when there are no tablespaces.
    pub tablespace_map: String,
}

/// A replication slot as `pg_replication_slots` shows it, with the WAL it holds back on the
/// server ([`Server::replication_slot`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotState {
    /// The slot's name.
    pub name: String,
    /// The server it is on, for messages.
    pub server: String,
    /// `physical` or `logical`.
    pub slot_type: String,
    /// A receiver streams from it now.
    pub active: bool,
    /// The oldest WAL the slot keeps (`None`: it keeps none, or lost it).
    pub restart_lsn: Option<Lsn>,
    /// Bytes of WAL the slot holds back on the server: from `restart_lsn` to where the server has
    /// written (a standby: received or replayed) WAL. `None` when the slot keeps no WAL.
    pub retained_bytes: Option<u64>,
    /// `reserved`, `extended`, `unreserved` (the next checkpoint may remove WAL the slot needs)
    /// or `lost` (it did).
    pub wal_status: Option<String>,
    /// Bytes that can still be written before the slot loses WAL (`None`: without limit, or lost).
    pub safe_wal_size: Option<i64>,
    /// The server's `max_slot_wal_keep_size` in bytes (`None`: -1, no limit).
    pub max_slot_wal_keep_size: Option<u64>,
}

impl SlotState {
    /// Whether the slot has lost WAL it needs: the receiver cannot resume from it.
    pub fn lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }

    /// Whether it is a physical slot, as the receiver needs.
    pub fn physical(&self) -> bool {
        self.slot_type == "physical"
    }
}

impl Server {
    /// Connects with `settings`, TLS as their `sslmode` says: the attempts libpq makes, in
    /// its order (over a Unix socket only one, without TLS).
    pub async fn connect(settings: &ConnectionSettings) -> Result<Server> {
        let config = &settings.config;
        let target = describe(config);
        let tcp = config.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_)));
        let attempts = settings.tls.attempts(tcp);
        let tls = match attempts.iter().any(|a| *a != Attempt::Plain) {
            true => Some(settings.tls.client_config().map_err(|e| Error::Server {
                target: target.clone(),
                reason: e.to_string(),
            })?),
            false => None,
        };
        let mut failures = Vec::new();
        let mut client = None;
        for attempt in attempts {
            let mut config = config.clone();
            let (result, tried_tls) = match (attempt, &tls) {
                (Attempt::Tls | Attempt::TlsIfOffered, Some(tls)) => {
                    let mode = match attempt {
                        Attempt::Tls => TokioSslMode::Require,
                        _ => TokioSslMode::Prefer,
                    };
                    let make = MakeRustls::new(tls.clone());
                    let result = open(config.ssl_mode(mode), make.clone()).await;
                    (result, make.handshake_started())
                }
                _ => (open(config.ssl_mode(TokioSslMode::Disable), NoTls).await, false),
            };
            match result {
                Ok(opened) => {
                    client = Some(opened);
                    break;
                }
                Err(e) => {
                    failures.push(connect_failure(&e, settings));
                    // libpq tries its next way only when this one reached the server: `prefer`
                    // without TLS after a failed TLS session, `allow` with TLS after a refusal.
                    let next = match attempt {
                        Attempt::TlsIfOffered => tried_tls,
                        Attempt::Plain => e.as_db_error().is_some(),
                        Attempt::Tls => false,
                    };
                    if !next {
                        break;
                    }
                }
            }
        }
        let client = client.ok_or_else(|| Error::Server {
            target: target.clone(),
            reason: format!("cannot connect: {}", failures.join("; then ")),
        })?;
        let mut server = Server {
            client,
            version: PgVersion::NEWEST,
            target,
            settings: settings.clone(),
        };
        let version_num: u32 = server
            .setting("server_version_num")
            .await?
            .parse()
            .map_err(|_| server.fail("server_version_num is not a number".into()))?;
        server.version = PgVersion::from_server_version_num(version_num).map_err(|e| server.fail(e.to_string()))?;
        Ok(server)
    }

    /// The server's major version.
    pub fn major_version(&self) -> PgVersion {
        self.version
    }

    /// Where the connection goes, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// A connection to database `dbname` of the same server, as the same user.
    pub async fn in_database(&self, dbname: &str) -> Result<Server> {
        let mut settings = self.settings.clone();
        settings.config.dbname(dbname);
        Server::connect(&settings).await
    }

    /// `current_setting(name)`.
    pub async fn setting(&self, name: &str) -> Result<String> {
        self.query_text("SELECT current_setting($1)", &[&name]).await
    }

    /// Whether the cluster's data pages carry checksums (`data_checksums`), with its page size
    /// (`block_size`) and the blocks in one segment of a relation file (`segment_size`, in
    /// pages: `RELSEG_SIZE`). Every role may read them.
    pub async fn page_layout(&self) -> Result<(bool, u32, u32)> {
        let text = self
            .query_text(
                "SELECT current_setting('data_checksums') || ' ' || current_setting('block_size') || ' ' || \
                 setting FROM pg_settings WHERE name = 'segment_size'",
                &[],
            )
            .await?;
        let fields: Vec<&str> = text.split(' ').collect();
        match fields.as_slice() {
            [checksums, block, segment] => match (block.parse(), segment.parse()) {
                (Ok(block), Ok(segment)) => Ok((*checksums == "on", block, segment)),
                _ => Err(self.fail(format!("unexpected block_size or segment_size in '{text}'"))),
            },
            _ => Err(self.fail(format!(
                "unexpected data_checksums, block_size and segment_size '{text}'"
            ))),
        }
    }

    /// The cluster's system identifier.
    pub async fn system_identifier(&self) -> Result<u64> {
        let text = self
            .query_text("SELECT system_identifier::text FROM pg_control_system()", &[])
            .await?;
        text.parse()
            .map_err(|_| self.fail(format!("unexpected system identifier '{text}'")))
    }

    /// Whether the server is a standby or recovering.
    pub async fn is_in_recovery(&self) -> Result<bool> {
        let row = self
            .client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| self.sql_error(e))?;
        Ok(row.get(0))
    }

    /// Whether the connected role may run both backup functions.
    pub async fn may_run_backups(&self) -> Result<bool> {
        let [start, stop] = self.version.backup_api().functions;
        let row = self
            .client
            .query_one(
                "SELECT has_function_privilege($1, 'execute') AND has_function_privilege($2, 'execute')",
                &[&start, &stop],
            )
            .await
            .map_err(|e| self.sql_error(e))?;
        Ok(row.get(0))
    }

    /// Starts a non-exclusive base backup on this connection; returns its start LSN.
    pub async fn backup_start(&self, label: &str, fast: bool) -> Result<Lsn> {
        let text = self
            .query_text(self.version.backup_api().start, &[&label, &fast])
            .await?;
        text.parse()
            .map_err(|_| self.fail(format!("unexpected start LSN '{text}'")))
    }

    /// Stops the backup started on this connection; with `wait_for_archive` PostgreSQL waits
    /// (checking once a second) until its last segment is archived.
    pub async fn backup_stop(&self, wait_for_archive: bool) -> Result<BackupStop> {
        let row = self
            .client
            .query_one(self.version.backup_api().stop, &[&wait_for_archive])
            .await
            .map_err(|e| self.sql_error(e))?;
        let lsn: String = row.get(0);
        Ok(BackupStop {
            lsn: lsn
                .parse()
                .map_err(|_| self.fail(format!("unexpected stop LSN '{lsn}'")))?,
            label_file: row.get(1),
            tablespace_map: row.get::<_, Option<String>>(2).unwrap_or_default(),
        })
    }

    /// `pg_create_restore_point(name)`: the restore point record's LSN.
    pub async fn create_restore_point(&self, name: &str) -> Result<Lsn> {
        let text = self
            .query_text("SELECT pg_create_restore_point($1)::text", &[&name])
            .await?;
        text.parse()
            .map_err(|_| self.fail(format!("unexpected restore point LSN '{text}'")))
    }

    /// `pg_switch_wal()`: closes the current segment so it is archived now.
    pub async fn switch_wal(&self) -> Result<Lsn> {
        let text = self.query_text("SELECT pg_switch_wal()::text", &[]).await?;
        text.parse()
            .map_err(|_| self.fail(format!("unexpected switch LSN '{text}'")))
    }

    /// The timeline the server writes WAL on now.
    pub async fn current_timeline(&self) -> Result<u32> {
        // The first 8 hex digits of the current segment's name are the insert timeline.
        let name = self
            .query_text("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
            .await?;
        name.get(..8)
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .ok_or_else(|| self.fail(format!("unexpected WAL file name '{name}'")))
    }

    /// `pg_current_wal_lsn()`: how far the server has written WAL.
    pub async fn current_wal_lsn(&self) -> Result<Lsn> {
        let text = self.query_text("SELECT pg_current_wal_lsn()::text", &[]).await?;
        text.parse()
            .map_err(|_| self.fail(format!("unexpected WAL location '{text}'")))
    }

    /// The first transaction id not yet assigned (`txid_snapshot_xmax` of a fresh snapshot).
    pub async fn next_xid(&self) -> Result<u64> {
        let text = self
            .query_text("SELECT txid_snapshot_xmax(txid_current_snapshot())::text", &[])
            .await?;
        text.parse()
            .map_err(|_| self.fail(format!("unexpected transaction id '{text}'")))
    }

    /// archive_command's failures, from `pg_stat_archiver`.
    pub async fn archiver_status(&self) -> Result<ArchiverStatus> {
        let row = self
            .client
            .query_one(
                "SELECT failed_count, last_failed_wal, \
                 coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) FROM pg_stat_archiver",
                &[],
            )
            .await
            .map_err(|e| self.sql_error(e))?;
        Ok(ArchiverStatus {
            failed_count: row.get(0),
            last_failed_wal: row.get(1),
            failing: row.get(2),
        })
    }

    /// The replication slot `name` from `pg_replication_slots`, `None` when there is none; the
    /// name is checked and passed as a parameter. (PostgreSQL 13 and later, which have
    /// `wal_status`, `safe_wal_size` and `max_slot_wal_keep_size`.)
    pub async fn replication_slot(&self, name: &str) -> Result<Option<SlotState>> {
        replication::check_slot_name(name)?;
        // pg_current_wal_lsn() fails during recovery: a standby's WAL ends where it received
        // or replayed it (no receive position without streaming).
        let sql = if self.is_in_recovery().await? {
            SLOT_QUERY_STANDBY
        } else {
            SLOT_QUERY_PRIMARY
        };
        let Some(row) = self
            .client
            .query_opt(sql, &[&name])
            .await
            .map_err(|e| self.sql_error(e))?
        else {
            return Ok(None);
        };
        let restart_lsn = row
            .get::<_, Option<String>>(2)
            .map(|text| {
                text.parse()
                    .map_err(|_| self.fail(format!("unexpected restart_lsn '{text}' of slot {name}")))
            })
            .transpose()?;
        Ok(Some(SlotState {
            name: name.to_string(),
            server: self.target.clone(),
            slot_type: row.get(0),
            active: row.get(1),
            restart_lsn,
            retained_bytes: row.get::<_, Option<i64>>(3).map(|b| b.max(0) as u64),
            wal_status: row.get(4),
            safe_wal_size: row.get(5),
            max_slot_wal_keep_size: row
                .get::<_, Option<i64>>(6)
                .filter(|mb| *mb >= 0)
                .map(|mb| mb as u64 * 1024 * 1024),
        }))
    }

    /// The server's log file, when the logging collector writes one and this role may ask
    /// (`pg_current_logfile()`); relative paths are resolved against the data directory.
    pub async fn log_file(&self) -> Option<std::path::PathBuf> {
        let file = self
            .client
            .query_one(
                "SELECT pg_current_logfile('stderr'), current_setting('data_directory')",
                &[],
            )
            .await
            .ok()?;
        let (file, data): (Option<String>, String) = (file.get(0), file.get(1));
        Some(std::path::Path::new(&data).join(file?))
    }

    /// Runs `sql` (one or more statements) and returns every row's values as text (NULL as `None`).
    pub async fn query_rows(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let messages = self.client.simple_query(sql).await.map_err(|e| self.sql_error(e))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect())
    }

    /// Runs `sql` with `params` and returns its rows.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        self.client.query(sql, params).await.map_err(|e| self.sql_error(e))
    }

    async fn query_text(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<String> {
        let row = self
            .client
            .query_one(sql, params)
            .await
            .map_err(|e| self.sql_error(e))?;
        Ok(row.get(0))
    }

    fn sql_error(&self, e: tokio_postgres::Error) -> Error {
        self.fail(error_text(&e))
    }

    /// An error about this server.
    pub fn fail(&self, reason: String) -> Error {
        Error::Server {
            target: self.target.clone(),
            reason,
        }
    }
}

/// [`Server::replication_slot`]'s query on a primary and on a standby: they differ only in where
/// the server's WAL ends. `max_slot_wal_keep_size` is in MB in `pg_settings`.
const SLOT_QUERY_PRIMARY: &str = "SELECT slot_type, active, restart_lsn::text, \
     pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status, safe_wal_size, \
     (SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size') \
     FROM pg_replication_slots WHERE slot_name = $1";
const SLOT_QUERY_STANDBY: &str = "SELECT slot_type, active, restart_lsn::text, \
     pg_wal_lsn_diff(greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), restart_lsn)::bigint, \
     wal_status, safe_wal_size, \
     (SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size') \
     FROM pg_replication_slots WHERE slot_name = $1";

/// Opens a connection with `tls` and runs it in the background.
async fn open<T>(config: &tokio_postgres::Config, tls: T) -> std::result::Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        // The connection ends when the client is dropped; its error is reported by the next query.
        let _ = connection.await;
    });
    Ok(client)
}

/// Why a connection attempt failed, and what to do.
fn connect_failure(e: &tokio_postgres::Error, settings: &ConnectionSettings) -> String {
    let mode = settings.tls.mode;
    if let Some(explained) = tls::explain(e, mode) {
        return explained;
    }
    let text = error_text(e);
    if text.contains("server does not support TLS") {
        return tls::not_offered(mode);
    }
    if let Some(hint) = e.as_db_error().and_then(|db| tls::refusal_hint(db.message())) {
        return format!("{text}: {hint}");
    }
    format!("{text}; check that the server runs and PGHOST/PGPORT/PGUSER or --dbname point at it")
}

/// The server's message when there is one (tokio-postgres' Display says only "db error").
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "server {host}:{port} (user {}, database {})",
        config.get_user().unwrap_or("?"),
        config.get_dbname().unwrap_or("?")
    )
}
