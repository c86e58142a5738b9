//! The private copy: recovered in a [`Scratch`] directory and promoted at the target with
//! archiving off (promoted, not paused: a copy paused just before the oops still holds the locks
//! the oops took, a `DROP TABLE`'s access exclusive lock among them, and pg_dump would wait for
//! them forever; promotion ends the transactions in progress), what the copy says about the database to restore, and the cleanup: its server
//! stopped and the directory removed, unless the operator keeps it.

use crate::backup::RestoreSummary;
use crate::error::{Error, Result};
use crate::pg::Server;
use crate::progress::Progress;
use crate::recover::{Outcome, Plan, RecoveryServer, Scratch};
use crate::repo::Repo;

use super::dump::DumpFrom;
use super::{quote_ident, CopyLeft};

/// The recovered copy, promoted at the target, on its private socket.
pub(super) struct Recovered {
    /// The restore of the backup's files.
    pub restored: RestoreSummary,
    /// How recovery ended.
    pub outcome: Option<Outcome>,
    /// The psql line that reaches it.
    pub connect: Option<String>,
    server: RecoveryServer,
}

/// What the copy says about the database (and table) to restore.
pub(super) struct Source {
    /// `pg_database_size` in the copy.
    pub bytes: u64,
    /// The database's owner in the copy.
    pub owner: String,
    /// Its encoding, LC_COLLATE and LC_CTYPE, for CREATE DATABASE.
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
    /// The table asked for, as `"schema"."table"` (also its pg_dump pattern).
    pub table: Option<String>,
    /// The roles that own objects of the database or hold grants on them.
    pub roles: Vec<String>,
}

/// Recovers the plan's target into `scratch` and promotes it there, never archiving.
pub(super) async fn recover(
    scratch: &Scratch,
    repo: &Repo,
    plan: &Plan,
    jobs: usize,
    pitr_command: &str,
    progress: &dyn Progress,
) -> Result<Recovered> {
    let copy = scratch.recover(repo, plan, jobs, pitr_command, None, progress).await?;
    Ok(Recovered {
        restored: copy.report.restored,
        outcome: copy.report.outcome,
        connect: copy.report.connect,
        server: copy.server,
    })
}

/// Once the dump is taken: the copy is of no further use (unless kept).
pub(super) fn stop_early(scratch: &Scratch, connect: Option<String>) -> Result<CopyLeft> {
    let mut left = finish(scratch)?;
    if scratch.kept() {
        left.connect = connect;
    }
    Ok(left)
}

/// Stops the copy's server and removes the scratch directory, unless it is kept; harmless when
/// done already.
pub(super) fn finish(scratch: &Scratch) -> Result<CopyLeft> {
    Ok(CopyLeft {
        directory: scratch.dir.clone(),
        removed: scratch.finish()?,
        connect: None,
    })
}

impl Recovered {
    /// The database `name` in the copy (and `table` in it), refused with what the copy holds
    /// when it is not there.
    pub async fn source(&self, name: &str, table: Option<&str>) -> Result<Source> {
        let copy = Server::connect(&self.server.connection("template1")).await?;
        let rows = copy
            .query(
                "SELECT pg_database_size(oid), pg_get_userbyid(datdba)::text, pg_encoding_to_char(encoding)::text, \
                 datcollate::text, datctype::text FROM pg_database WHERE datname::text = $1",
                &[&name],
            )
            .await?;
        let Some(row) = rows.first() else {
            let existing = copy
                .query(
                    "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
                    &[],
                )
                .await?;
            let existing: Vec<String> = existing.iter().map(|r| r.get(0)).collect();
            return Err(Error::InvalidInput(format!(
                "there is no database '{name}' in the copy at this target; it holds {}: name one of those \
                 (or choose another target); production was not touched",
                existing.join(", ")
            )));
        };
        let in_database = Server::connect(&self.server.connection(name)).await?;
        Ok(Source {
            bytes: row.get::<_, i64>(0).max(0) as u64,
            owner: row.get(1),
            encoding: row.get(2),
            collate: row.get(3),
            ctype: row.get(4),
            table: match table {
                Some(table) => Some(find_table(&in_database, name, table).await?),
                None => None,
            },
            roles: roles_in(&in_database).await?,
        })
    }

    /// Where pg_dump reads `database` (and the table) from.
    pub fn dump_source(&self, database: &str, source: &Source) -> DumpFrom {
        DumpFrom {
            socket_dir: self.server.socket_dir.clone(),
            port: self.server.port().unwrap_or(5432),
            user: self.server.owner.name.clone(),
            database: database.to_string(),
            table: source.table.clone(),
        }
    }
}

/// The table `table` (as to_regclass reads it: `schema.table`, or `table` on the search path)
/// in the copy's `database`, as `"schema"."table"`; refused, with the tables there, when absent.
async fn find_table(copy: &Server, database: &str, table: &str) -> Result<String> {
    let found = copy
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p', 'm', 'f')",
            &[&table],
        )
        .await
        .unwrap_or_default();
    if let Some(row) = found.first() {
        return Ok(format!("{}.{}", quote_ident(row.get(0)), quote_ident(row.get(1))));
    }
    let tables = copy
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1 LIMIT 20",
            &[],
        )
        .await?;
    let tables: Vec<String> = tables.iter().map(|r| r.get(0)).collect();
    Err(Error::InvalidInput(format!(
        "there is no table '{table}' in database {database} of the copy at this target; it has {}: name one of \
         those (schema.table); production was not touched",
        if tables.is_empty() {
            "no tables".to_string()
        } else {
            tables.join(", ")
        }
    )))
}

/// The roles a dump of the database names: owners and grantees of its objects (pg_shdepend),
/// and the owners of its tables (the bootstrap superuser's objects are not in pg_shdepend).
async fn roles_in(copy: &Server) -> Result<Vec<String>> {
    let rows = copy
        .query(
            "SELECT pg_get_userbyid(refobjid)::text FROM pg_shdepend \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND refclassid = 'pg_authid'::regclass AND deptype IN ('o', 'a') \
             UNION SELECT pg_get_userbyid(c.relowner)::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' \
             ORDER BY 1",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
