//! `pitr restore-database`: one database (or one table of it) back into production, with the
//! precision of point-in-time recovery, the way the reference runbook restores a logical dump:
//! into a new database beside the current one, verified, then switched by renaming.
//!
//! This module owns the orchestration: the checks on production before any restore work
//! ([`production`]), a private copy of the cluster recovered at the target through
//! [`crate::recover`] (promoted at the target, never archiving) in a scratch directory ([`copy`]), the database
//! piped out of the copy with `pg_dump -Fc` into `pg_restore` on production ([`dump`]), the
//! verification query, and the switch by renames that never drops the old database. The copy's
//! server is stopped and its scratch directory removed however the run ends (unless the operator
//! keeps it). Confirming the switch is the binary's business: it calls [`switch`] once the
//! operator agreed.

mod copy;
mod dump;
mod production;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backup::RestoreSummary;
use crate::error::{Error, Result};
use crate::interrupt;
use crate::progress::Progress;
use crate::recover::{Outcome, Plan, Scratch};
use crate::repo::Repo;

pub use production::{switch, Switched};

/// PostgreSQL's longest identifier, in bytes (NAMEDATALEN - 1).
const MAX_NAME_BYTES: usize = 63;

/// What to restore, from where, into which server.
#[derive(Debug, Clone)]
pub struct Options {
    /// The database to restore, as it is named in the copy (and on production).
    pub database: String,
    /// The production server (`--into`); pitr connects to its maintenance database.
    pub production: crate::pg::ConnectionSettings,
    /// Only this table (`schema.table` or `table`).
    pub table: Option<String>,
    /// SQL run in the restored database on production, its rows reported.
    pub verify_sql: Option<String>,
    /// The operator asks for the switch: its preconditions are checked before any work.
    pub switch: bool,
    /// The directory the scratch copy is created in (a fresh 0700 directory below it).
    pub scratch_parent: PathBuf,
    /// Leave the copy running in its scratch directory at the end.
    pub keep_copy: bool,
    /// Files restored at once.
    pub jobs: usize,
    /// This pitr with its repository and config options, for the copy's restore_command.
    pub pitr_command: String,
    /// When the run started: the names' timestamp.
    pub started: DateTime<Utc>,
}

/// The databases a run deals with on production.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseNames {
    /// The database restored (`catalog`).
    pub database: String,
    /// The new database the copy goes into (`catalog_restore_<YYYYMMDD_HHMMSS>`).
    pub restored: String,
    /// What the current database is renamed to by the switch (`catalog_before_restore_<ts>`).
    pub before_restore: String,
}

impl DatabaseNames {
    /// The names for `database` at `started` (UTC); a name PostgreSQL would truncate is refused.
    pub fn new(database: &str, started: DateTime<Utc>) -> Result<DatabaseNames> {
        if database.is_empty() || database.contains('\0') || database.len() > MAX_NAME_BYTES {
            return Err(Error::InvalidInput(format!(
                "'{}' is not a database name: PostgreSQL names are 1 to {MAX_NAME_BYTES} bytes without NUL",
                database.escape_debug()
            )));
        }
        let stamp = started.format("%Y%m%d_%H%M%S");
        Ok(DatabaseNames {
            database: database.to_string(),
            restored: format!("{database}_restore_{stamp}"),
            before_restore: format!("{database}_before_restore_{stamp}"),
        })
    }

    /// Refuses a name longer than PostgreSQL keeps (it would silently truncate it).
    fn check_length(name: &str, what: &str) -> Result<()> {
        if name.len() > MAX_NAME_BYTES {
            return Err(Error::InvalidInput(format!(
                "{what} would be {name} ({} bytes), longer than PostgreSQL's {MAX_NAME_BYTES}: rename the database \
                 to a shorter name first, or restore it by hand (pitr recover, then pg_dump)",
                name.len()
            )));
        }
        Ok(())
    }
}

/// Refuses what cannot work, before anything is done: bad names, and --switch with --table.
pub fn validate(options: &Options) -> Result<DatabaseNames> {
    let names = DatabaseNames::new(&options.database, options.started)?;
    DatabaseNames::check_length(&names.restored, "the restored database")?;
    if options.switch {
        if options.table.is_some() {
            return Err(Error::InvalidInput(
                "--switch replaces the whole database, --table restores one table: they do not go together. \
                 Restore the table without --switch, then copy the rows you need from the restored database \
                 into the current one (INSERT ... SELECT through postgres_fdw or dblink, or \\copy)"
                    .into(),
            ));
        }
        DatabaseNames::check_length(&names.before_restore, "the renamed current database")?;
    }
    Ok(names)
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The databases on production.
    pub names: DatabaseNames,
    /// The production server (host, port, user; never a password).
    pub production: String,
    /// The table restored alone, schema-qualified.
    pub table: Option<String>,
    /// The copy's restore of the backup.
    pub restored: RestoreSummary,
    /// How the copy's recovery ended.
    pub outcome: Option<Outcome>,
    /// The database's size in the copy (`pg_database_size`).
    pub database_bytes: u64,
    /// The restored database's owner on production, and why that one.
    pub owner: String,
    /// Why the owner is that role.
    pub owner_reason: String,
    /// Whether object owners and grants were restored as they were.
    pub kept_owners_and_grants: bool,
    /// Why not, when not.
    pub ownership_note: Option<String>,
    /// The production side of the space check.
    pub production_space: String,
    /// The verification query's rows, from the restored database on production.
    pub verify_rows: Option<Vec<Vec<Option<String>>>>,
    /// Why the verification query failed, when it did (then nothing is switched).
    pub verify_error: Option<String>,
    /// The switch as SQL, to run connected to the maintenance database.
    pub switch_sql: Vec<String>,
    /// The switch, once done.
    pub switched: Option<Switched>,
    /// Where the scratch copy was, and whether it is gone.
    pub copy: CopyLeft,
}

/// What became of the scratch copy.
#[derive(Debug, Clone, Serialize)]
pub struct CopyLeft {
    /// The scratch directory.
    pub directory: PathBuf,
    /// Its server was stopped and the directory removed.
    pub removed: bool,
    /// How to reach it, when it is kept running (`--keep-copy`).
    pub connect: Option<String>,
}

/// The SQL of the switch, run connected to the maintenance database (`postgres`), never to
/// either database: connections are refused, the ones left terminated, the current database
/// renamed away (its connection setting back as it was) and the restored one renamed into place.
pub fn switch_sql(names: &DatabaseNames) -> Vec<String> {
    let (db, restored, before) = (
        quote_ident(&names.database),
        quote_ident(&names.restored),
        quote_ident(&names.before_restore),
    );
    vec![
        format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false;"),
        format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {} AND pid <> pg_backend_pid();",
            quote_literal(&names.database)
        ),
        format!("ALTER DATABASE {db} RENAME TO {before};"),
        format!("ALTER DATABASE {before} ALLOW_CONNECTIONS true;"),
        format!("ALTER DATABASE {restored} RENAME TO {db};"),
    ]
}

/// Restores `options.database` as it was at the plan's target into a new database on
/// production: checks production, recovers the copy, checks the database (and table) in it and
/// the space on production, creates the database, pipes the dump into it and verifies it. The
/// switch is left to [`switch`]. `narrate` receives one line per step.
pub async fn run(
    repo: &Repo,
    plan: &Plan,
    options: &Options,
    narrate: &dyn Fn(&str),
    progress: &dyn Progress,
) -> Result<Report> {
    let names = validate(options)?;
    let tools = dump::Tools::find(plan.pg_version)?;
    let target = production::Production::check(&options.production, &names, options.switch).await?;
    narrate(&format!(
        "production {}: may create {}{}",
        target.describe(),
        names.restored,
        if options.switch {
            format!(" and rename {}", names.database)
        } else {
            String::new()
        }
    ));
    interrupt::check("checking production")?;
    let scratch = Scratch::create(
        repo,
        &options.scratch_parent,
        "pitr-restore-database-",
        plan.pg_version,
        options.keep_copy,
    )?;
    narrate(&format!("recovering a private copy in {}", scratch.dir.display()));
    let work = Work {
        repo,
        plan,
        options,
        names: &names,
        narrate,
        progress,
    };
    let result = work.copy_out(&target, &tools, &scratch).await;
    let left = copy::finish(&scratch);
    match result {
        Ok(report) => left.map(|_| report),
        Err(e) => Err(with_cleanup(e, &names, left)),
    }
}

/// What one run works with.
struct Work<'a> {
    repo: &'a Repo,
    plan: &'a Plan,
    options: &'a Options,
    names: &'a DatabaseNames,
    narrate: &'a dyn Fn(&str),
    progress: &'a dyn Progress,
}

impl Work<'_> {
    /// The work between creating the scratch copy and cleaning it up.
    async fn copy_out(
        &self,
        target: &production::Production,
        tools: &dump::Tools,
        scratch: &Scratch,
    ) -> Result<Report> {
        let (options, names) = (self.options, self.names);
        let recovered = copy::recover(
            scratch,
            self.repo,
            self.plan,
            options.jobs,
            &options.pitr_command,
            self.progress,
        )
        .await?;
        (self.narrate)(&format!(
            "the copy reached the target: {}",
            recovered
                .outcome
                .as_ref()
                .and_then(|o| o.stopped.clone())
                .unwrap_or_else(|| "all archived WAL replayed".into())
        ));
        let source = recovered.source(&names.database, options.table.as_deref()).await?;
        let production_space = target.check_space(source.bytes).await?;
        let ownership = target.ownership(&source).await?;
        interrupt::check("about to create the database on production")?;
        target
            .create_database(&names.restored, &source, &ownership.owner)
            .await?;
        (self.narrate)(&format!(
            "created {} on production (owner {}); piping pg_dump -Fc from the copy into pg_restore",
            names.restored, ownership.owner
        ));
        let from = recovered.dump_source(&names.database, &source);
        tools
            .copy(&from, &target.restore_into(&names.restored), &ownership)
            .await?;
        (self.narrate)("pg_restore finished");
        let copy = copy::stop_early(scratch, recovered.connect.clone())?;
        let (verify_rows, verify_error) = match &options.verify_sql {
            Some(sql) => match target.verify(&names.restored, sql).await {
                Ok(rows) => (Some(rows), None),
                Err(e) => (None, Some(e.to_string())),
            },
            None => (None, None),
        };
        Ok(Report {
            names: names.clone(),
            production: target.describe(),
            table: source.table.clone(),
            restored: recovered.restored,
            outcome: recovered.outcome,
            database_bytes: source.bytes,
            owner: ownership.owner,
            owner_reason: ownership.owner_reason,
            kept_owners_and_grants: ownership.keep,
            ownership_note: ownership.note,
            production_space,
            verify_rows,
            verify_error,
            switch_sql: switch_sql(names),
            switched: None,
            copy,
        })
    }
}

/// A failed run's error, with what the cleanup did and what is left on production.
fn with_cleanup(error: Error, names: &DatabaseNames, left: Result<CopyLeft>) -> Error {
    let copy = match left {
        Ok(CopyLeft {
            directory,
            removed: true,
            ..
        }) => {
            format!("the copy's server is stopped and {} removed", directory.display())
        }
        Ok(CopyLeft { directory, .. }) => format!("the copy is kept in {} (--keep-copy)", directory.display()),
        Err(e) => format!("the scratch copy could not be cleaned up: {e}"),
    };
    match error {
        // Not recover's words on what is left: the copy is cleaned up here.
        Error::Interrupted(_) => Error::Interrupted(format!(
            "restore-database of {} stopped; {copy}; on production, {} is absent or incomplete: drop it if it \
             exists (DROP DATABASE {}); {} is untouched",
            names.database,
            names.restored,
            quote_ident(&names.restored),
            names.database
        )),
        other => Error::Refused(format!("{other}; {copy}")),
    }
}

/// An identifier for SQL, always quoted (names come from the operator).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal for SQL (standard_conforming_strings on, the default since 9.1).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started() -> DateTime<Utc> {
        "2026-12-06T23:30:05Z".parse().unwrap()
    }

    #[test]
    fn names_carry_the_utc_timestamp_and_stay_within_63_bytes() {
        let names = DatabaseNames::new("catalog", started()).unwrap();
        assert_eq!(names.restored, "catalog_restore_20261206_233005");
        assert_eq!(names.before_restore, "catalog_before_restore_20261206_233005");
        assert!(DatabaseNames::new("", started()).is_err());
        assert!(DatabaseNames::new(&"x".repeat(64), started()).is_err());
        assert!(
            DatabaseNames::check_length(&DatabaseNames::new(&"x".repeat(40), started()).unwrap().restored, "it")
                .is_err()
        );
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("cat\"alog"), "\"cat\"\"alog\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        let sql = switch_sql(&DatabaseNames::new("Sales DB", started()).unwrap());
        assert_eq!(sql[0], "ALTER DATABASE \"Sales DB\" ALLOW_CONNECTIONS false;");
        assert!(sql[1].contains("datname = 'Sales DB'"));
        assert_eq!(
            sql[4],
            "ALTER DATABASE \"Sales DB_restore_20261206_233005\" RENAME TO \"Sales DB\";"
        );
    }
}
