//! Each subcommand: a few lines that call into the `pitr` library and print the result.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pitr::archive::{self, GetOutcome, Site};
use pitr::backup::{self, BackupOptions, RestoreOptions, Tier};
use pitr::pg::{connection_settings, Server};
use pitr::prefetch::{self, Prefetched};
use pitr::progress::Progress;
use pitr::recover::{self, Action, RecoverOptions};
use pitr::repo::Repo;
use pitr::restore_database;
use pitr::restore_point::{self, CreateOptions};
use pitr::storage::Location;
use pitr::wal::WalFileName;
use pitr::Result;

use crate::cli::{Command, ConnectionArgs, WalCommand};
use crate::output::{self, TerminalProgress};
use crate::settings::Settings;
use crate::verify;
use crate::watch;

/// How a command ended, short of an error.
pub enum Done {
    /// Success.
    Ok,
    /// archive-get: not in the archive.
    NotFound,
    /// verify: warnings only (the report says which).
    Warnings,
    /// verify, check-integrity: something critical (the report says what).
    Critical,
    /// init: changes pending (a dry run that found some, or a restart of PostgreSQL).
    Pending,
}

/// Runs `pitr demo`, which brings its own repository.
pub fn demo(keep: bool, json: bool) -> Result<Done> {
    arm_interrupts()?;
    let exe = std::env::current_exe().map_err(pitr::Error::io("find", "this pitr executable"))?;
    let progress = TerminalProgress::new(json);
    let narrate = |line: &str| {
        if !json {
            println!("{line}")
        }
    };
    let summary = runtime().block_on(pitr::demo::run(&exe, keep, &narrate, &progress))?;
    if json {
        output::json(&summary);
    } else {
        println!(
            "done: products is back with {} rows at the restore point and {} rows at the time target",
            summary.rows_at_restore_point, summary.rows_at_time
        );
    }
    Ok(Done::Ok)
}

/// `pitr keygen OUT`: a new identity into `out`, its recipient on stdout.
pub fn keygen(out: &Path) -> Result<Done> {
    let recipient = pitr::crypt::write_new_identity(out)?;
    println!("{recipient}");
    Ok(Done::Ok)
}

/// Runs `command` with validated `settings`.
pub fn run(command: &Command, settings: &Settings) -> Result<Done> {
    if let Command::Verify { .. } = command {
        // Before the repository is opened: verify records a missing one in its log and metrics.
        return verify::verify(command, settings);
    }
    if let Command::Init { .. } = command {
        // Before the repository is opened: init creates it.
        return init(command, settings);
    }
    let repo = Repo::open(&settings.repo)?.with_keys(settings.keys.clone());
    match command {
        Command::ArchivePush { path } => {
            archive::push(&repo, &settings.codec, path, &Site::current(settings.spool.as_deref()))?;
            Ok(Done::Ok)
        }
        Command::ArchiveGet { name, dest, generation } => {
            let site = Site::current(settings.spool.as_deref());
            // Either way archive-get reads the segment while it looks the generation up.
            let repo = match generation {
                Some(n) => repo.at_unchecked(*n),
                None => repo,
            };
            match archive::get(&repo, name, dest, &site)? {
                GetOutcome::Restored(_) => {
                    start_prefetch(name, *generation, &site, settings);
                    Ok(Done::Ok)
                }
                GetOutcome::RestoredPastDamagedPrefetch { warning, .. } => {
                    // stderr goes to the server log: the one line that says what happened.
                    eprintln!("pitr archive-get: warning: {warning}");
                    start_prefetch(name, *generation, &site, settings);
                    Ok(Done::Ok)
                }
                GetOutcome::NotFound => Ok(Done::NotFound),
            }
        }
        Command::Prefetch { name, generation } => {
            // Background work: PostgreSQL's replay and archive-get come first on the CPUs.
            let _ = rustix::process::nice(PREFETCH_NICENESS);
            let site = Site::current(settings.spool.as_deref());
            let repo = at_generation(&repo, *generation)?;
            if let (Some(spool), Some(info)) = (&site.spool, repo.info()?) {
                Prefetched::new(spool, &repo, &info).fill(
                    &WalFileName::parse(name)?,
                    settings.prefetch,
                    settings.jobs,
                )?;
            }
            Ok(Done::Ok)
        }
        Command::Watch { pgdata, workers, slot } => {
            let pgdata = data_directory(pgdata.as_deref(), settings)?;
            watch::run(&repo, settings, &pgdata, *workers, slot.as_deref())?;
            Ok(Done::Ok)
        }
        Command::Daemon { pgdata, listen } => {
            let pgdata = data_directory(pgdata.as_deref(), settings)?;
            watch::daemon(&repo, settings, &pgdata, listen.clone())?;
            Ok(Done::Ok)
        }
        Command::Slot {
            action,
            slot,
            connection,
        } => {
            let slot = slot.clone().unwrap_or_else(|| receiver_slot(settings));
            let conninfo = connection.dbname.as_deref().or(settings.dbname.as_deref());
            let options = watch::stream_options(conninfo, slot)?;
            match action.as_str() {
                "create" => pitr::stream::create_slot(&options)?,
                _ => pitr::stream::drop_slot(&options)?,
            }
            Ok(Done::Ok)
        }
        Command::Names {
            action,
            connection,
            json,
        } if action == "record" => {
            let recorded = with_server(connection, settings, |server| async move {
                pitr::names::record(&repo, &server).await
            })?;
            if *json {
                output::json(&recorded)
            } else {
                output::names_recorded(&recorded)
            }
            Ok(Done::Ok)
        }
        Command::Names { json, .. } => {
            let maps = repo.names_maps()?;
            if *json {
                output::json(&maps)
            } else {
                output::names_maps(&maps)
            }
            Ok(Done::Ok)
        }
        Command::CreateRepo { connection, json } => {
            let report = with_server(connection, settings, |server| async move {
                pitr::generations::create_repo(&repo, &server).await
            })?;
            if *json {
                output::json(&report)
            } else {
                output::create_report(&report)
            }
            Ok(Done::Ok)
        }
        Command::RotateKey { rewrite, json } => {
            let report = repo.rotate_key(*rewrite)?;
            if *json {
                output::json(&report)
            } else {
                output::rotate_report(&report, *rewrite)
            }
            Ok(Done::Ok)
        }
        Command::UpgradeRepo { connection, json } => {
            let report = with_server(connection, settings, |server| async move {
                pitr::generations::upgrade_repo(&repo, &server).await
            })?;
            if *json {
                output::json(&report)
            } else {
                output::upgrade_report(&report)
            }
            Ok(Done::Ok)
        }
        Command::Backup {
            tier,
            pgdata,
            connection,
            fast,
            jobs,
            dedup,
            no_dedup,
            read_all,
            no_expire,
            json,
        } => {
            let deduplicate =
                deduplicates(*dedup, *no_dedup, *read_all, settings).map_err(pitr::Error::InvalidInput)?;
            let options = BackupOptions {
                tier: tier.parse()?,
                name: settings.name.clone(),
                pgdata: pgdata.clone(),
                fast: *fast,
                jobs: jobs.unwrap_or(settings.jobs),
                codec: settings.codec,
                deduplicate,
                read_all: *read_all,
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
        Command::List { what, json } if what == "restore-points" => {
            let points = recover::restore_points(&repo)?;
            if *json {
                output::json(&points)
            } else {
                output::restore_points(&points)
            }
            Ok(Done::Ok)
        }
        Command::List { what, json } => {
            let tier = (what != "all").then(|| what.parse::<Tier>()).transpose()?;
            let listing = backup::list(&repo, tier)?;
            if *json {
                // The array of backups, as before; unreadable ones are named on stderr.
                for b in &listing.unreadable {
                    eprintln!("pitr list: warning: backup {} is unreadable: {}", b.id, b.reason);
                }
                output::json(&listing.backups)
            } else {
                output::listing(&listing)
            }
            Ok(Done::Ok)
        }
        Command::RestorePoint {
            name,
            connection,
            no_switch,
            allow_duplicate,
            timeout,
            json,
        } => {
            let options = CreateOptions {
                switch_wal: !no_switch,
                allow_duplicate: *allow_duplicate,
                timeout: Duration::from_secs(*timeout),
            };
            let progress = TerminalProgress::new(*json);
            let point = with_server(connection, settings, |server| async move {
                restore_point::create(&repo, &server, name, options, &progress).await
            })?;
            if *json {
                output::json(&point)
            } else {
                output::restore_point(&point, options.switch_wal)
            }
            Ok(Done::Ok)
        }
        Command::Recover { .. } => recover(&repo, command, settings),
        Command::RestoreDatabase { .. } => restore_database(&repo, command, settings),
        Command::Drill { .. } => drill(&repo, command, settings),
        Command::Adopt { pgdata, json } => {
            let report = recover::adopt(&repo, &settings.codec, &absolute(pgdata), &pitr_command(settings)?)?;
            if *json {
                output::json(&report)
            } else {
                output::adopt_report(&report)
            }
            Ok(Done::Ok)
        }
        Command::Demo { keep, json } => demo(*keep, *json),
        Command::Verify { .. } => unreachable!("verify runs before the repository is opened"),
        Command::Init { .. } => unreachable!("init runs before the repository is opened"),
        Command::Completions { .. } | Command::Man { .. } | Command::Keygen { .. } => {
            unreachable!("completions and man pages are written before settings are loaded")
        }
        Command::CheckIntegrity { target, jobs, json } => verify::check_integrity(target, *jobs, *json, Ok(settings)),
        Command::Check {
            connection,
            timeout,
            json,
        } => verify::check(&repo, connection, Duration::from_secs(*timeout), *json, settings),
        Command::Info { json, html } => match html {
            Some(path) => verify::status_page(&repo, settings, path),
            None => verify::info(&repo, *json),
        },
        Command::Sync {
            to,
            dry_run,
            jobs,
            json,
        } => {
            let target = match to {
                Some(text) => Location::parse(text)?,
                None => settings.sync_to.clone().ok_or_else(|| {
                    pitr::Error::InvalidInput(
                        "no repository to sync to: pass --to REPO or set `sync_to` in the config file".into(),
                    )
                })?,
            };
            let target = Repo::open(&target)?.with_keys(settings.keys.clone());
            let report = pitr::sync::sync(
                &repo,
                &target,
                jobs.unwrap_or(settings.jobs),
                *dry_run,
                &TerminalProgress::new(*json),
            )?;
            if *json {
                output::json(&report)
            } else {
                output::sync_report(&report)
            }
            Ok(if report.problems.is_empty() {
                Done::Ok
            } else {
                Done::Critical
            })
        }
        Command::Wal { command } => wal(&repo, command, settings),
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

/// Runs `pitr init`: the library plans (and applies), this prints.
fn init(command: &Command, settings: &Settings) -> Result<Done> {
    let Command::Init {
        pgdata,
        connection,
        apply,
        timeout,
        json,
    } = command
    else {
        unreachable!("called for init only")
    };
    let conninfo = connection.dbname.as_deref().or(settings.dbname.as_deref());
    let options = pitr::setup::InitOptions {
        pgdata: pgdata.as_deref().map(absolute).or_else(|| settings.pgdata.clone()),
        repo: settings.repo.clone(),
        keys: settings.keys.clone(),
        config_file: absolute(&settings.config.clone().expect("init's settings name the config file")),
        stream: watch::stream_options(conninfo, receiver_slot(settings))?,
        pitr_command: pitr_command(settings)?,
        apply: *apply,
        check_timeout: Duration::from_secs(*timeout),
    };
    let progress = TerminalProgress::new(*json);
    let report = with_server(connection, settings, |server| async move {
        pitr::setup::init(&server, &options, &progress).await
    })?;
    if *json {
        output::json(&report)
    } else {
        output::init_report(&report)
    }
    match &report.check {
        pitr::setup::CheckOutcome::Failed { error } => Err(pitr::Error::Refused(format!(
            "the settings are in place, but check failed: {error}"
        ))),
        _ if report.pending() => Ok(Done::Pending),
        _ => Ok(Done::Ok),
    }
}

/// The WAL receiver's slot: `slot` from the config file, else "pitr".
fn receiver_slot(settings: &Settings) -> String {
    settings.slot.clone().unwrap_or_else(|| "pitr".into())
}

/// The data directory of watch and the daemon: --pgdata, else `pgdata` from the config file.
fn data_directory(flag: Option<&std::path::Path>, settings: &Settings) -> Result<PathBuf> {
    flag.map(absolute).or_else(|| settings.pgdata.clone()).ok_or_else(|| {
        pitr::Error::InvalidInput(
            "no data directory given: pass --pgdata DIR, or set `pgdata` in the config file (pitr init writes it)"
                .into(),
        )
    })
}

/// Runs `pitr wal ...`.
fn wal(repo: &Repo, command: &WalCommand, settings: &Settings) -> Result<Done> {
    let WalCommand::Events {
        from,
        to,
        from_lsn,
        to_lsn,
        timeline,
        table,
        database,
        kind,
        min_rows,
        jobs,
        json,
    } = command;
    let options = pitr::inspect::ScanOptions {
        from: *from,
        to: *to,
        from_lsn: *from_lsn,
        to_lsn: *to_lsn,
        timeline: *timeline,
        jobs: jobs.unwrap_or(settings.jobs),
    };
    let filter = pitr::inspect::Filter {
        tables: table.clone(),
        databases: database.clone(),
        kinds: kind.iter().copied().collect(),
        min_rows: *min_rows,
    };
    let report = pitr::inspect::events(repo, &options, &filter, &TerminalProgress::new(*json))?;
    if *json {
        output::json(&report.events);
        if report.names_missing {
            eprintln!("{}", output::NAMES_MISSING);
        }
    } else {
        output::wal_events(&report);
    }
    Ok(Done::Ok)
}

/// How much the prefetcher lowers its CPU priority. With the prefetcher at the same priority,
/// replay took about 5 % longer on 2 cores (bench/findings.md).
const PREFETCH_NICENESS: i32 = 10;

/// The repository pinned to `generation` when one is asked for, else to its current one.
fn at_generation(repo: &Repo, generation: Option<u32>) -> Result<Repo> {
    match generation {
        Some(n) => repo.at(n),
        None => repo.pin(),
    }
}

/// Starts `pitr prefetch` for the segments after `name` (of `generation`), detached:
/// archive-get returns at once and PostgreSQL's next request finds them in the spool. Any
/// failure only means no prefetch.
fn start_prefetch(name: &str, generation: Option<u32>, site: &Site, settings: &Settings) {
    let is_segment = matches!(WalFileName::parse(name), Ok(WalFileName::Segment(_)));
    let Some(spool) = site.spool.as_ref().filter(|_| settings.prefetch > 0 && is_segment) else {
        return;
    };
    if prefetch::at_work(spool) {
        // It keeps the window full as archive-get takes segments: no second process needed.
        return;
    }
    let Ok(prefix) = pitr_command_words(settings) else {
        return;
    };
    let mut command = std::process::Command::new(&prefix[0]);
    command.args(&prefix[1..]).args(["prefetch", name]);
    if let Some(n) = generation {
        command.arg("--generation").arg(n.to_string());
    }
    if let Some(spool) = &settings.spool {
        command.arg("--spool").arg(spool);
    }
    let _ = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Connects with the libpq environment and --dbname, and runs `work` on a tokio runtime.
pub(crate) fn with_server<T, F, Fut>(connection: &ConnectionArgs, settings: &Settings, work: F) -> Result<T>
where
    F: FnOnce(Server) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let conninfo = connection.dbname.as_deref().or(settings.dbname.as_deref());
    let config = connection_settings(conninfo, &|k| std::env::var(k).ok())?;
    runtime().block_on(async { work(Server::connect(&config).await?).await })
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

/// SIGINT and SIGTERM ask the library to stop and clean up (the servers pitr started, their
/// socket directories, the demo's directory); a second one ends pitr at once.
fn arm_interrupts() -> Result<()> {
    let flag = pitr::interrupt::flag();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, flag.clone())
            .and_then(|_| signal_hook::flag::register(signal, flag.clone()))
            .map_err(pitr::Error::io("handle signals of", "pitr"))?;
    }
    Ok(())
}

fn recover(repo: &Repo, command: &Command, settings: &Settings) -> Result<Done> {
    let Command::Recover {
        pgdata,
        recovery,
        action,
        port,
        no_start,
        dry_run,
        verify_sql,
        verify_db,
        keep_archiving,
        force,
        jobs,
        json,
    } = command
    else {
        unreachable!("called for recover only")
    };
    let request = recovery.request();
    let pgdata = absolute(pgdata);
    let jobs = jobs.unwrap_or(settings.jobs);
    let (repo, plan) = recover::plan_recovery(repo, &request, recovery.generation, jobs)?;
    let repo = &repo;
    recover::check_space(&plan, &pgdata)?;
    if !json {
        output::plan(&plan, &pgdata);
    }
    if *dry_run {
        if *json {
            output::json(&plan);
        }
        return Ok(Done::Ok);
    }
    let options = RecoverOptions {
        pgdata,
        force: *force,
        action: match action.as_str() {
            "pause" => Action::Pause,
            "shutdown" => Action::Shutdown,
            _ => Action::Promote,
        },
        port: *port,
        no_start: *no_start,
        keep_archiving: *keep_archiving,
        verify_sql: verify_sql.clone(),
        verify_database: verify_db.clone(),
        jobs,
        pitr_command: pitr_command(settings)?,
    };
    let progress = TerminalProgress::new(*json);
    // From here on pitr writes and starts a server: an interruption cleans up after itself.
    arm_interrupts()?;
    let report = runtime().block_on(recover::execute(repo, &plan, &options, &progress))?;
    progress.finish();
    if *json {
        output::json(&serde_json::json!({ "plan": plan, "report": report }));
    } else {
        output::recover_report(&report);
    }
    match &report.verify_error {
        Some(error) => Err(pitr::Error::Refused(format!(
            "recovery reached the target, but --verify-sql failed: {error}; the copy is running (see connect above)"
        ))),
        None => Ok(Done::Ok),
    }
}

fn restore_database(repo: &Repo, command: &Command, settings: &Settings) -> Result<Done> {
    let Command::RestoreDatabase {
        database,
        recovery,
        into,
        table,
        verify_sql,
        switch,
        yes,
        scratch,
        keep_copy,
        jobs,
        json,
    } = command
    else {
        unreachable!("called for restore-database only")
    };
    let options = restore_database::Options {
        database: database.clone(),
        production: connection_settings(Some(into), &|k| std::env::var(k).ok())?,
        table: table.clone(),
        verify_sql: verify_sql.clone(),
        switch: *switch,
        scratch_parent: scratch.as_deref().map_or_else(std::env::temp_dir, absolute),
        keep_copy: *keep_copy,
        jobs: jobs.unwrap_or(settings.jobs),
        pitr_command: pitr_command(settings)?,
        started: chrono::Utc::now(),
    };
    let names = restore_database::validate(&options)?;
    let ask = *switch && !*yes;
    if ask && !std::io::stdin().is_terminal() {
        return Err(pitr::Error::InvalidInput(
            "--switch asks for confirmation on a terminal, and stdin is not one: pass --yes to switch without \
             asking; nothing was done"
                .into(),
        ));
    }
    let (repo, plan) = recover::plan_recovery(repo, &recovery.request(), recovery.generation, options.jobs)?;
    let repo = &repo;
    recover::check_space(&plan, &options.scratch_parent)?;
    if !json {
        output::plan(&plan, &options.scratch_parent);
    }
    let progress = TerminalProgress::new(*json);
    let narrate = |line: &str| {
        if !json {
            println!("{line}")
        }
    };
    // From here on pitr restores and starts a server: an interruption cleans up after itself.
    arm_interrupts()?;
    let runtime = runtime();
    let mut report = runtime.block_on(restore_database::run(repo, &plan, &options, &narrate, &progress))?;
    if !json {
        output::restore_database_report(&report);
    }
    let outcome = match &report.verify_error {
        Some(error) => Err(pitr::Error::Refused(format!(
            "--verify-sql failed in {0} on production: {error}; nothing was switched, {0} is kept: look into it, \
             drop it when done (DROP DATABASE {1})",
            names.restored,
            restore_database::quote_ident(&names.restored)
        ))),
        None if *switch => {
            if ask && !confirmed(&names)? {
                return Err(pitr::Error::Refused(format!(
                    "the switch was not confirmed: nothing was switched; {} is kept beside {}",
                    names.restored, names.database
                )));
            }
            report.switched = Some(runtime.block_on(restore_database::switch(&options.production, &names))?);
            if !json {
                output::switched(&report);
            }
            Ok(Done::Ok)
        }
        None => Ok(Done::Ok),
    };
    if *json {
        output::json(&serde_json::json!({ "plan": plan, "report": report }));
    }
    outcome
}

/// Asks the operator on the terminal to type the database's name before the switch.
fn confirmed(names: &restore_database::DatabaseNames) -> Result<bool> {
    eprint!(
        "Switch: {0} becomes {1}, and {2} becomes {0}; its sessions are terminated. Type {0} to switch: ",
        names.database, names.before_restore, names.restored
    );
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(pitr::Error::io("read", "the confirmation from stdin"))?;
    Ok(answer.trim_end_matches(['\n', '\r']) == names.database)
}

/// This pitr with the same repository and config, for the commands pitr writes into
/// PostgreSQL's configuration (restore_command, archive_command) and prints.
fn pitr_command(settings: &Settings) -> Result<String> {
    Ok(pitr_command_words(settings)?
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" "))
}

/// Runs `pitr drill` and `pitr drill list`.
fn drill(repo: &Repo, command: &Command, settings: &Settings) -> Result<Done> {
    let Command::Drill {
        action,
        tier,
        all: _,
        random,
        scratch,
        verify_sql,
        jobs,
        json,
    } = command
    else {
        unreachable!("called for drill only")
    };
    if action.is_some() {
        let history = pitr::drill::history(repo)?;
        if *json {
            output::json(&history)
        } else {
            output::drill_history(&history)
        }
        return Ok(Done::Ok);
    }
    let drill = &settings.service().map_err(pitr::Error::InvalidInput)?.drill;
    arm_interrupts()?;
    let options = pitr::drill::DrillOptions {
        tier: tier.as_deref().map(str::parse).transpose()?,
        random: *random || drill.random,
        scratch_parent: match (scratch, &drill.scratch) {
            (Some(flag), _) => absolute(flag),
            (None, Some(configured)) => configured.clone(),
            (None, None) => std::env::temp_dir(),
        },
        verify_sql: verify_sql.clone().or_else(|| settings.drill_verify_sql.clone()),
        jobs: jobs.unwrap_or(settings.jobs),
        pitr_command: pitr_command(settings)?,
    };
    let report = runtime().block_on(pitr::drill::drill(repo, &options, &TerminalProgress::new(*json)))?;
    if *json {
        output::json(&report)
    } else {
        output::drill_report(&report)
    }
    Ok(if report.passed { Done::Ok } else { Done::Critical })
}

/// This pitr with the same repository and config, as words.
fn pitr_command_words(settings: &Settings) -> Result<Vec<String>> {
    let exe = std::env::current_exe().map_err(pitr::Error::io("find", "this pitr executable"))?;
    let mut words = vec![exe.display().to_string(), "--repo".into(), settings.repo.absolute()?];
    if let Some(config) = &settings.config {
        words.extend(["--config".to_string(), absolute(config).display().to_string()]);
    }
    Ok(words)
}

/// Quotes a word for /bin/sh when it needs it.
fn shell_quote(word: &str) -> String {
    if word
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:".contains(&b))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Arguments that contradict the settings: bad arguments, refused before anything is tried.
pub fn check_arguments(command: &Command, settings: &Settings) -> std::result::Result<(), String> {
    if let Command::Backup {
        dedup,
        no_dedup,
        read_all,
        ..
    } = command
    {
        deduplicates(*dedup, *no_dedup, *read_all, settings)?;
    }
    Ok(())
}

/// Whether a backup is deduplicated: with `--dedup`, or when the config file says `dedup = true`
/// and `--no-dedup` is absent. `--read-all` applies to deduplicated backups only.
fn deduplicates(dedup: bool, no_dedup: bool, read_all: bool, settings: &Settings) -> std::result::Result<bool, String> {
    let deduplicate = dedup || (settings.dedup && !no_dedup);
    if read_all && !deduplicate {
        return Err(
            "--read-all applies to deduplicated backups: add --dedup, or set `dedup = true` in the config file".into(),
        );
    }
    Ok(deduplicate)
}

fn run_backup(
    repo: &Repo,
    connection: &ConnectionArgs,
    options: &BackupOptions,
    expire: bool,
    json: bool,
    settings: &Settings,
) -> Result<Done> {
    let progress = TerminalProgress::new(json);
    let summary = with_server(connection, settings, |server| async move {
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
