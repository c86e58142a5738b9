//! Each subcommand: a few lines that call into the `pitr` library and print the result.

use std::path::PathBuf;

use pitr::archive::{self, GetOutcome};
use pitr::backup::{self, BackupOptions, RestoreOptions, Tier};
use pitr::pg::{connection_config, Server};
use pitr::repo::Repo;
use pitr::Result;

use crate::cli::{Command, ConnectionArgs};
use crate::output::{self, TerminalProgress};
use crate::settings::Settings;

/// How a command ended, short of an error.
pub enum Done {
    /// Success.
    Ok,
    /// archive-get: not in the archive.
    NotFound,
}

/// Runs `command` with validated `settings`.
pub fn run(command: &Command, settings: &Settings) -> Result<Done> {
    let repo = Repo::open_local(&settings.repo)?;
    match command {
        Command::ArchivePush { path } => {
            archive::push(&repo, &settings.codec, path, archive::current_data_dir().as_deref())?;
            Ok(Done::Ok)
        }
        Command::ArchiveGet { name, dest } => {
            match archive::get(&repo, name, dest, archive::current_data_dir().as_deref())? {
                GetOutcome::Restored(_) => Ok(Done::Ok),
                GetOutcome::NotFound => Ok(Done::NotFound),
            }
        }
        Command::Backup {
            tier,
            pgdata,
            connection,
            fast,
            jobs,
            no_expire,
            json,
        } => {
            let options = BackupOptions {
                tier: tier.parse()?,
                name: settings.name.clone(),
                pgdata: pgdata.clone(),
                fast: *fast,
                jobs: jobs.unwrap_or(settings.jobs),
                codec: settings.codec,
            };
            run_backup(&repo, connection, &options, !no_expire, *json, settings)
        }
        Command::Restore {
            pgdata,
            backup,
            force,
            jobs,
            json,
        } => {
            let options = RestoreOptions {
                backup: backup.clone(),
                target: absolute(pgdata),
                force: *force,
                jobs: jobs.unwrap_or(settings.jobs),
            };
            let summary = backup::restore(&repo, &options, &TerminalProgress::new(*json))?;
            if *json {
                output::json(&summary)
            } else {
                output::restore_summary(&summary)
            }
            Ok(Done::Ok)
        }
        Command::List { tier, json } => {
            let tier = (tier != "all").then(|| tier.parse::<Tier>()).transpose()?;
            let listing = backup::list(&repo, tier)?;
            if *json {
                output::json(&listing.backups)
            } else {
                output::listing(&listing)
            }
            Ok(Done::Ok)
        }
        Command::Expire { dry_run, json } => {
            let plan = backup::expire(&repo, settings.retention, None, *dry_run)?;
            if *json {
                output::json(&plan)
            } else {
                output::expire_plan(&plan, *dry_run)
            }
            Ok(Done::Ok)
        }
    }
}

fn run_backup(
    repo: &Repo,
    connection: &ConnectionArgs,
    options: &BackupOptions,
    expire: bool,
    json: bool,
    settings: &Settings,
) -> Result<Done> {
    let config = connection_config(connection.dbname.as_deref(), &|k| std::env::var(k).ok())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let progress = TerminalProgress::new(json);
    let summary = runtime.block_on(async {
        let server = Server::connect(&config).await?;
        backup::take(repo, &server, options, &progress).await
    })?;
    let plan = expire
        .then(|| backup::expire(repo, settings.retention, Some(options.tier), false))
        .transpose()?;
    if json {
        output::json(&serde_json::json!({ "backup": summary, "expired": plan }));
    } else {
        output::backup_summary(&summary);
        if let Some(plan) = plan.filter(|p| !p.backups.is_empty() || !p.wal.is_empty()) {
            output::expire_plan(&plan, false);
        }
    }
    Ok(Done::Ok)
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::env::current_dir()
        .map(|cwd| cwd.join(path))
        .unwrap_or_else(|_| path.to_path_buf())
}
