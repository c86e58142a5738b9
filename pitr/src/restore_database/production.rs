//! The production side: connecting to its maintenance database (never to the database being
//! restored or switched), the checks before any restore work (the role may create databases,
//! the new name is free, for a switch the database exists and the role may rename it), its free
//! space when it runs on this host, who owns the restored database and its objects, creating it,
//! verifying it, and the switch by renames.
//!
//! The switch follows PostgreSQL's documentation of `ALTER DATABASE` (RENAME TO, ALLOW_CONNECTIONS)
//! and of `pg_terminate_backend` (System Administration Functions): connections are refused
//! first, so a client reconnecting between the terminate and the rename cannot get in; the
//! rename is retried a few times; the old database keeps its data under its new name and gets
//! its connection setting back. Nothing is ever dropped.

use std::path::Path;
use std::time::Duration;

use crate::pg::ConnectionSettings;
use serde::Serialize;
use tokio_postgres::config::Host;

use crate::control;
use crate::error::{Error, Result};
use crate::pg::Server;

use super::copy::Source;
use super::dump::conninfo;
use super::{quote_ident, quote_literal, DatabaseNames};

/// Maintenance databases, in the order pitr tries them (as createdb does).
const MAINTENANCE_DATABASES: [&str; 2] = ["postgres", "template1"];
/// Terminate-and-rename attempts before the switch gives up.
const RENAME_ATTEMPTS: u32 = 5;

/// A connection to production's maintenance database and what the connecting role may do.
pub(super) struct Production {
    config: ConnectionSettings,
    server: Server,
    role: String,
    superuser: bool,
}

/// Who owns the restored database and its objects.
pub(super) struct Ownership {
    /// The restored database's owner.
    pub owner: String,
    /// Why that role.
    pub owner_reason: String,
    /// Object owners kept as in the copy (else pg_restore --no-owner).
    pub keep: bool,
    /// Grants left out (pg_restore --no-privileges): some grantee does not exist on production.
    pub no_privileges: bool,
    /// What was not kept and why.
    pub note: Option<String>,
}

/// Where pg_restore writes: a connection string without the password, which goes in PGPASSWORD.
pub(super) struct RestoreInto {
    pub conninfo: String,
    pub password: Option<String>,
    pub database: String,
}

/// What the switch did.
#[derive(Debug, Clone, Serialize)]
pub struct Switched {
    /// Sessions terminated (on the current database, then on the restored one).
    pub terminated: u64,
    /// Terminate-and-rename attempts the current database took.
    pub attempts: u32,
    /// The old database's ALLOW_CONNECTIONS as it was before the switch, set again.
    pub allow_connections: bool,
}

impl Production {
    /// Connects and checks that the run can do its work on production, before any.
    pub async fn check(config: &ConnectionSettings, names: &DatabaseNames, switch: bool) -> Result<Production> {
        let (config, server) = maintenance(config).await?;
        let row = server
            .query(
                "SELECT current_user::text, rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?;
        let row = row
            .first()
            .ok_or_else(|| refused(&server, "the connecting role is not in pg_roles".into()))?;
        let production = Production {
            role: row.get(0),
            superuser: row.get(1),
            config,
            server,
        };
        let may_create: bool = row.get(2);
        if !production.superuser && !may_create {
            return Err(refused(
                &production.server,
                format!(
                    "role {} may not create databases (it has neither CREATEDB nor SUPERUSER): connect as a role \
                     that may (--into \"user=...\"), or grant it: ALTER ROLE {} CREATEDB; nothing was done",
                    production.role,
                    quote_ident(&production.role)
                ),
            ));
        }
        if production.exists(&names.restored).await?.is_some() {
            return Err(production.fail(format!(
                "database {} exists already: drop it (DROP DATABASE {}) or run again a second later; nothing was done",
                names.restored,
                quote_ident(&names.restored)
            )));
        }
        if switch {
            production.check_switch(names).await?;
        }
        Ok(production)
    }

    /// For --switch: the database exists, the role may rename it, the new name is free.
    async fn check_switch(&self, names: &DatabaseNames) -> Result<()> {
        let Some(may_rename) = self.exists(&names.database).await? else {
            return Err(self.fail(format!(
                "there is no database {} to switch: run without --switch (the restore goes into {}, rename it \
                 yourself); nothing was done",
                names.database, names.restored
            )));
        };
        if !may_rename {
            return Err(self.fail(format!(
                "role {} neither owns database {} nor is a superuser, so it may not rename it (ALTER DATABASE \
                 ... RENAME needs its owner): connect as its owner or a superuser; nothing was done",
                self.role, names.database
            )));
        }
        if self.exists(&names.before_restore).await?.is_some() {
            return Err(self.fail(format!(
                "database {} exists already: the switch renames {} to that name; rename it or run again a second \
                 later; nothing was done",
                names.before_restore, names.database
            )));
        }
        Ok(())
    }

    /// `Some(whether the role may rename it)` when database `name` exists.
    async fn exists(&self, name: &str) -> Result<Option<bool>> {
        let rows = self
            .server
            .query(
                "SELECT pg_has_role(datdba, 'USAGE') FROM pg_database WHERE datname::text = $1",
                &[&name],
            )
            .await?;
        Ok(rows.first().map(|r| self.superuser || r.get::<_, bool>(0)))
    }

    /// The server, user and maintenance database (never a password).
    pub fn describe(&self) -> String {
        self.server.target().to_string()
    }

    /// Refuses when production's data directory is on this host and has less than `bytes` free;
    /// says so when it could not be checked.
    pub async fn check_space(&self, bytes: u64) -> Result<String> {
        let needed = bytes >> 20;
        let Ok(data_directory) = self.server.setting("data_directory").await else {
            return Ok(format!(
                "not checked: role {} may not read data_directory (superuser or pg_read_all_settings): make sure \
                 production has {needed} MiB free",
                self.role
            ));
        };
        let path = Path::new(&data_directory);
        let here = control::read_identity(path).ok().map(|i| i.system_identifier);
        let there = self.server.system_identifier().await.ok();
        if here.is_none() || here != there {
            return Ok(format!(
                "not checked: production's data directory {data_directory} is not on this host (or not readable \
                 here): make sure it has {needed} MiB free"
            ));
        }
        let stat = rustix::fs::statvfs(path).map_err(|e| Error::io("stat", path)(e.into()))?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if bytes > free {
            return Err(self.fail(format!(
                "its data directory {data_directory} has {} MiB free, the database needs {needed} MiB: free space \
                 first; nothing was created",
                free >> 20
            )));
        }
        Ok(format!(
            "{data_directory} has {} MiB free, the database needs {needed} MiB",
            free >> 20
        ))
    }

    /// The owner of the restored database (the copy's owner when that role exists here and the
    /// connecting role may create databases for it), and whether object owners and grants are
    /// kept: only when every role they name exists here (and, short of a superuser, the
    /// connecting role is a member of each).
    pub async fn ownership(&self, source: &Source) -> Result<Ownership> {
        let mut wanted = source.roles.clone();
        wanted.push(source.owner.clone());
        let rows = self
            .server
            .query(
                "SELECT rolname::text, pg_has_role(oid, 'MEMBER') FROM pg_roles WHERE rolname::text = ANY($1)",
                &[&wanted],
            )
            .await?;
        let here: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), self.superuser || r.get(1))).collect();
        let usable = |role: &str| here.iter().any(|(name, member)| name == role && *member);
        let missing: Vec<&str> = source
            .roles
            .iter()
            .filter(|r| !here.iter().any(|(name, _)| name == *r))
            .map(String::as_str)
            .collect();
        let not_member: Vec<&str> = source
            .roles
            .iter()
            .filter(|r| here.iter().any(|(name, member)| name == *r && !member))
            .map(String::as_str)
            .collect();
        let (owner, owner_reason) = if usable(&source.owner) {
            (source.owner.clone(), "the database's owner in the copy".to_string())
        } else if here.iter().any(|(name, _)| name == &source.owner) {
            (
                self.role.clone(),
                format!(
                    "the connecting role: the copy's owner {} exists here, but {} is not a member of it",
                    source.owner, self.role
                ),
            )
        } else {
            (
                self.role.clone(),
                format!(
                    "the connecting role: the copy's owner {} does not exist here",
                    source.owner
                ),
            )
        };
        let note = if !missing.is_empty() {
            Some(format!(
                "roles {} of the copy do not exist on production: the objects belong to {} and no grants were \
                 restored (pg_restore --no-owner --no-privileges); create those roles and run again to keep them",
                missing.join(", "),
                self.role
            ))
        } else if !not_member.is_empty() {
            Some(format!(
                "{} is neither a superuser nor a member of {}: the objects belong to {} (pg_restore --no-owner); \
                 grants were restored",
                self.role,
                not_member.join(", "),
                self.role
            ))
        } else {
            None
        };
        Ok(Ownership {
            owner,
            owner_reason,
            keep: note.is_none(),
            no_privileges: !missing.is_empty(),
            note,
        })
    }

    /// `CREATE DATABASE name OWNER owner` from template0, with the copy's encoding and locale.
    pub async fn create_database(&self, name: &str, source: &Source, owner: &str) -> Result<()> {
        let sql = format!(
            "CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            quote_ident(name),
            quote_ident(owner),
            quote_literal(&source.encoding),
            quote_literal(&source.collate),
            quote_literal(&source.ctype)
        );
        self.server.query_rows(&sql).await.map(|_| ())
    }

    /// How pg_restore reaches database `name` on production.
    pub fn restore_into(&self, name: &str) -> RestoreInto {
        let host = match self.config.config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(path)) => path.to_string_lossy().into_owned(),
            None => "/var/run/postgresql".into(),
        };
        let port = self
            .config
            .config
            .get_ports()
            .first()
            .copied()
            .unwrap_or(5432)
            .to_string();
        let mut pairs = vec![
            ("host", host),
            ("port", port),
            ("user", self.role.clone()),
            ("dbname", name.to_string()),
            ("application_name", "pitr restore-database".to_string()),
        ];
        // pg_restore goes over the same TLS as pitr's own connection.
        pairs.extend(self.config.tls.conninfo_pairs());
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        RestoreInto {
            conninfo: conninfo(&pairs),
            password: self
                .config
                .config
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            database: name.to_string(),
        }
    }

    /// Runs `sql` in database `name` on production; its rows as text.
    pub async fn verify(&self, name: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let mut config = self.config.clone();
        config.config.dbname(name);
        Server::connect(&config).await?.query_rows(sql).await
    }

    fn fail(&self, reason: String) -> Error {
        refused(&self.server, reason)
    }
}

/// Switches: the restored database takes the name of the current one, which is kept under
/// `names.before_restore`. Connects to production's maintenance database.
pub async fn switch(config: &ConnectionSettings, names: &DatabaseNames) -> Result<Switched> {
    let (_, server) = maintenance(config).await?;
    let rows = server
        .query(
            "SELECT datallowconn FROM pg_database WHERE datname::text = $1",
            &[&names.database],
        )
        .await?;
    let allow_connections: bool = rows
        .first()
        .ok_or_else(|| refused(&server, format!("there is no database {} to switch", names.database)))?
        .get(0);
    let (db, before) = (quote_ident(&names.database), quote_ident(&names.before_restore));
    server
        .query_rows(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"))
        .await?;
    let (terminated, attempts) = match rename_exclusively(&server, &names.database, &names.before_restore).await {
        Ok(done) => done,
        Err(e) => {
            let reset = server
                .query_rows(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS {allow_connections}"))
                .await;
            return Err(refused(
                &server,
                format!(
                    "could not rename {} after {RENAME_ATTEMPTS} attempts ({}); nothing was switched{}; {} stays \
                     beside it",
                    names.database,
                    reason_of(&e),
                    if reset.is_ok() {
                        ", its connections are allowed again"
                    } else {
                        ""
                    },
                    names.restored
                ),
            ));
        }
    };
    server
        .query_rows(&format!(
            "ALTER DATABASE {before} ALLOW_CONNECTIONS {allow_connections}"
        ))
        .await?;
    match rename_exclusively(&server, &names.restored, &names.database).await {
        Ok((more, _)) => Ok(Switched {
            terminated: terminated + more,
            attempts,
            allow_connections,
        }),
        Err(e) => {
            let back = rename_exclusively(&server, &names.before_restore, &names.database).await;
            Err(refused(
                &server,
                format!(
                    "renamed {} to {}, but could not rename {} into its place ({}); {}",
                    names.database,
                    names.before_restore,
                    names.restored,
                    reason_of(&e),
                    match back {
                        Ok(_) => format!("{} has its name back: nothing is switched", names.database),
                        Err(_) => format!("rename it back yourself: ALTER DATABASE {before} RENAME TO {db}"),
                    }
                ),
            ))
        }
    }
}

/// Terminates the sessions on database `from` (not this one) and renames it to `to`, a few times
/// if a session holds on; the sessions terminated and the attempts taken.
async fn rename_exclusively(server: &Server, from: &str, to: &str) -> Result<(u64, u32)> {
    let mut terminated = 0;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let rows = server
            .query(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname::text = $1 AND pid <> pg_backend_pid()",
                &[&from],
            )
            .await?;
        terminated += rows.first().map_or(0, |r| r.get::<_, i64>(0).max(0) as u64);
        let sql = format!("ALTER DATABASE {} RENAME TO {}", quote_ident(from), quote_ident(to));
        match server.query_rows(&sql).await {
            Ok(_) => return Ok((terminated, attempt)),
            Err(e) if attempt >= RENAME_ATTEMPTS => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Connects to production's maintenance database (`postgres`, else `template1`).
async fn maintenance(config: &ConnectionSettings) -> Result<(ConnectionSettings, Server)> {
    let mut first_error = None;
    for name in MAINTENANCE_DATABASES {
        let mut config = config.clone();
        config.config.dbname(name).application_name("pitr restore-database");
        match Server::connect(&config).await {
            Ok(server) => return Ok((config, server)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.expect("at least one maintenance database was tried"))
}

/// What the server said, without naming the server again.
fn reason_of(error: &Error) -> String {
    match error {
        Error::Server { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

fn refused(server: &Server, reason: String) -> Error {
    Error::Server {
        target: server.target().to_string(),
        reason,
    }
}
