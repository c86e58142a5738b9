//! Point-in-time recovery: plan (from the repository's state and the archived WAL's records,
//! printed first), restore the chosen backup, write the recovery settings, drive PostgreSQL to
//! the target, verify, and hand over. An interruption (SIGINT, SIGTERM) stops the server pitr
//! started and leaves the restored directory, saying so.

mod adopt;
mod archived;
mod drive;
mod plan;
mod scratch;
mod segments;
mod settings;
mod target;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub(crate) use adopt::stop_if_running;
pub use adopt::{adopt, AdoptReport};
pub use archived::{ArchivedRecords, Mark, MarkKind, SegmentSummary, Span};
pub use drive::{Action, Outcome, RecoveryServer, RECOVERY_LOG};
pub use plan::{plan, reach, reaches_restore_point, Plan, Reach, RepoState, Request, StopsBefore, TimelineChoice};
pub use scratch::{RecoveredCopy, Scratch};
pub use segments::ArchivedSegments;
pub use target::Target;

use crate::backup::{self, RestoreOptions, RestoreSummary};
use crate::error::{Error, Result};
use crate::info::{earlier_generations, Holdings};
use crate::interrupt;
use crate::pg::ctl::{self, Owner};
use crate::pg::Server;
use crate::progress::Progress;
use crate::repo::Repo;
use crate::restore_point::{self, RestorePoint};
use crate::spool::Spool;

/// How to carry out a plan.
#[derive(Debug, Clone)]
pub struct RecoverOptions {
    /// The new data directory.
    pub pgdata: PathBuf,
    /// Wipe a non-empty `pgdata`.
    pub force: bool,
    /// recovery_target_action.
    pub action: Action,
    /// The recovered server's port.
    pub port: Option<u16>,
    /// Stop after writing the files and settings.
    pub no_start: bool,
    /// Leave archive_mode as the backup had it (off by default: a copy must never archive its
    /// new timeline into the production archive).
    pub keep_archiving: bool,
    /// SQL run on the recovered server, its result printed.
    pub verify_sql: Option<String>,
    /// The database `verify_sql` runs in.
    pub verify_database: String,
    /// Files restored at once.
    pub jobs: usize,
    /// This pitr with its repository and config options (`/usr/bin/pitr --repo /r`): the
    /// restore_command written runs it, and the next steps name it.
    pub pitr_command: String,
}

/// What a recovery did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The restore of the backup's files.
    pub restored: RestoreSummary,
    /// How recovery ended (`None` with --no-start).
    pub outcome: Option<Outcome>,
    /// The server's state after recovery, from SQL.
    pub server_state: Option<ServerState>,
    /// The verification query's rows.
    pub verify_rows: Option<Vec<Vec<Option<String>>>>,
    /// Why the verification query failed, when it did.
    pub verify_error: Option<String>,
    /// How to reach the recovered server while pitr's private settings are in force.
    pub connect: Option<String>,
    /// The private socket directory of that run (remove it once the server is stopped).
    pub socket_dir: Option<PathBuf>,
    /// What the operator does next.
    pub next_steps: Vec<String>,
}

/// Where the recovered server stands, from SQL.
#[derive(Debug, Clone, Serialize)]
pub struct ServerState {
    /// Still in recovery (paused).
    pub in_recovery: bool,
    /// The end of the last replayed record.
    pub replay_lsn: Option<String>,
    /// The time of the last replayed commit or abort.
    pub last_commit_time: Option<String>,
}

/// The repository pinned to the generation a recovery plans in: `generation` when asked
/// (`--generation`), else the generation of the backup asked for (`--backup`), of the restore
/// point named (the current generation's when it has one of that name, else the newest that
/// has), or for a time target the newest generation with a backup consistent at or before it;
/// the current generation otherwise (LSN and transaction targets, `immediate`, `latest`).
pub fn generation_for(repo: &Repo, request: &Request, generation: Option<u32>) -> Result<Repo> {
    if let Some(n) = generation {
        return repo.at(n);
    }
    let Some(generations) = repo.generations()? else {
        return repo.pin();
    };
    let current = generations.current().generation;
    let of_backup = |m: &crate::backup::manifest::ManifestSummary| generations.of_cluster(m.system_identifier);
    let chosen = match (&request.backup, &request.target) {
        (Some(id), _) => backup::load_summaries(repo)?
            .iter()
            .find(|m| &m.id == id)
            .and_then(of_backup)
            .map(|g| g.generation),
        (None, Target::Name(name)) => {
            let named: Vec<u32> = restore_point::catalog(repo)?
                .into_iter()
                .filter(|p| &p.name == name && generations.get(p.generation).is_some())
                .map(|p| p.generation)
                .collect();
            named.contains(&current).then_some(current).or(named.into_iter().max())
        }
        (None, Target::Time { time, .. }) => backup::load_summaries(repo)?
            .iter()
            .filter(|m| m.stop_time <= *time)
            .filter_map(of_backup)
            .map(|g| g.generation)
            .max(),
        (None, _) => None,
    };
    repo.at(chosen.unwrap_or(current))
}

/// Plans a recovery of `repo` as `request` asks: in the generation [`generation_for`] picks (or
/// `generation`), from the repository's state ([`repo_state`]), and for `--before` with what the
/// transaction it stops before did, from the archived WAL (read on `jobs` threads from the
/// chosen backup's start). Returns the repository pinned to that generation, and the plan.
pub fn plan_recovery(repo: &Repo, request: &Request, generation: Option<u32>, jobs: usize) -> Result<(Repo, Plan)> {
    let repo = generation_for(repo, request, generation)?;
    let mut plan = plan::plan(&repo_state(&repo)?, request)?;
    if let Some(before) = &mut plan.stops_before {
        let options = crate::inspect::ScanOptions {
            from_lsn: Some(plan.backup_start_lsn),
            timeline: plan.timeline_path.last().map(|step| step.timeline),
            jobs,
            ..Default::default()
        };
        let names = crate::names::Names::load(&repo)?;
        let key = crate::inspect::TransactionKey::CommitLsn(before.commit_lsn);
        before.did =
            crate::inspect::find_transaction(&repo, &names, key, &options)?.map(|event| match event.database {
                Some(database) => format!("in database {database}: {}", event.summary),
                None => event.summary,
            });
    }
    Ok((repo, plan))
}

/// Gathers what the planner needs from the generation `repo` acts on (pin it first:
/// [`generation_for`]); its WAL records are read as the target needs them. Unlike `pitr info`,
/// recovery does not work around what cannot be read, except a backup whose manifest is
/// unreadable, which is left out (the others still recover): an unreadable history file or
/// restore point catalog is an error here.
pub fn repo_state(repo: &Repo) -> Result<RepoState<'_>> {
    let holdings = Holdings::read(repo)?;
    let segments = holdings.archived_segments();
    let segment_size = holdings.segment_size();
    let (generation, replaced_by) = (holdings.generation, holdings.replaced_by);
    // A backup whose manifest cannot be read cannot be restored: the plan chooses among the others.
    let mut backups: Vec<_> = holdings
        .catalog
        .into_iter()
        .filter_map(|entry| entry.manifest.ok())
        .collect();
    backups.sort_by_key(|m| m.stop_time);
    let histories = holdings
        .histories
        .into_iter()
        .map(|(timeline, parsed)| parsed.map(|switches| (timeline, switches)))
        .collect::<Result<_>>()?;
    Ok(RepoState {
        backups,
        segments,
        histories,
        restore_points: holdings.restore_points?,
        segment_size,
        records: ArchivedRecords::reading(repo),
        generation,
        replaced_by,
    })
}

/// A recorded restore point, and whether `pitr recover --target-name` recovers to it.
#[derive(Debug, Clone, Serialize)]
pub struct ListedRestorePoint {
    /// The point.
    #[serde(flatten)]
    pub point: RestorePoint,
    /// `pitr recover --target-name <name>` recovers to it.
    pub recoverable: bool,
    /// Why it does not.
    pub unrecoverable_reason: Option<String>,
}

/// The restore point catalog of every generation, each point marked with whether the planner
/// would reach it in its generation (expired backups or WAL, another timeline, an earlier point
/// of the same name).
pub fn restore_points(repo: &Repo) -> Result<Vec<ListedRestorePoint>> {
    let points = restore_point::catalog(repo)?;
    let current = repo.pin()?;
    let mut handles = BTreeMap::new();
    for earlier in earlier_generations(repo)? {
        if let Some(generation) = earlier.generation()? {
            handles.insert(generation.generation, earlier);
        }
    }
    let states: BTreeMap<u32, Result<RepoState>> = handles.iter().map(|(n, handle)| (*n, repo_state(handle))).collect();
    let current_state = repo_state(&current);
    Ok(points
        .into_iter()
        .map(|point| {
            let state = states.get(&point.generation).unwrap_or(&current_state);
            let verdict = match state {
                Ok(state) => reaches_restore_point(state, &point),
                Err(e) => Err(format!("the repository cannot be planned from: {e}")),
            };
            ListedRestorePoint {
                recoverable: verdict.is_ok(),
                unrecoverable_reason: verdict.err(),
                point,
            }
        })
        .collect())
}

/// Refuses when the new data directory's file system cannot hold the restore.
pub fn check_space(plan: &Plan, pgdata: &Path) -> Result<()> {
    let existing = pgdata.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let stat = rustix::fs::statvfs(existing).map_err(|e| Error::io("stat", existing)(e.into()))?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    if plan.restore_bytes > free {
        return Err(Error::Refused(format!(
            "{} has {} MiB free, the backup needs {} MiB: free space or restore elsewhere",
            existing.display(),
            free >> 20,
            plan.restore_bytes >> 20
        )));
    }
    Ok(())
}

/// Restores, configures and (unless `no_start`) drives the recovery the plan describes.
pub async fn execute(repo: &Repo, plan: &Plan, options: &RecoverOptions, progress: &dyn Progress) -> Result<Report> {
    let restore = RestoreOptions {
        backup: Some(plan.backup_id.clone()),
        target: options.pgdata.clone(),
        force: options.force,
        jobs: options.jobs,
    };
    let restored = backup::restore(repo, &restore, progress).map_err(|e| left_incomplete(e, &options.pgdata))?;
    crate::crash_point::reached("recover:restored");
    let owner = owner_for(repo, &options.pgdata)?;
    settings::write_recovery(
        &options.pgdata,
        &recovery_settings(plan, options),
        "recovery settings (pitr recover)",
    )?;
    let mut report = Report {
        restored,
        outcome: None,
        server_state: None,
        verify_rows: None,
        verify_error: None,
        connect: None,
        socket_dir: None,
        next_steps: Vec::new(),
    };
    let unconfigured = !options.pgdata.join("postgresql.conf").exists();
    if options.no_start {
        report.next_steps = unconfigured
            .then(|| without_configuration(options))
            .into_iter()
            .collect();
        report.next_steps.push(format!(
            "start recovery: pg_ctl -D {} start (as {}); PostgreSQL replays to the target",
            options.pgdata.display(),
            owner.name
        ));
        return Ok(report);
    }
    if unconfigured {
        return Err(Error::Refused(format!(
            "backup {} has no configuration to start the copy with: {}; pitr started nothing",
            plan.backup_id,
            without_configuration(options)
        )));
    }
    interrupt::check("about to start the server").map_err(|e| left_incomplete(e, &options.pgdata))?;
    let bindir = ctl::bindir(plan.pg_version)?;
    // From here on the server's socket directory goes with `server` unless a server runs in it.
    let server = RecoveryServer::start(&options.pgdata, owner, bindir)?;
    let expect_stop = !matches!(plan.recovery_target, Target::Latest);
    let mut outcome = server.follow(options.action, expect_stop, progress).await?;
    if options.action == Action::Shutdown && outcome.action == Action::Promote {
        // Without a target (latest) PostgreSQL promotes whatever the action: honour "shutdown".
        server.stop()?;
        outcome.action = Action::Shutdown;
    }
    if outcome.action != Action::Shutdown {
        // Replay is over: what archive-get prefetched beside the copy is of no further use.
        let _ = std::fs::remove_dir_all(Spool::default_for(&options.pgdata).join("prefetch"));
        let promoted = outcome.action == Action::Promote;
        let (state, (rows, error)) = inspect(&server, options, promoted).await?;
        report.server_state = Some(state);
        report.verify_rows = rows;
        report.verify_error = error;
        report.connect = Some(format!(
            "psql -h {} -p {} -U {} postgres",
            server.socket_dir.display(),
            server.port().unwrap_or(5432),
            server.owner.name
        ));
    }
    report.socket_dir = server.running().then(|| server.socket_dir.clone());
    report.next_steps = next_steps(plan, options, report.restored.configuration.as_ref());
    report.outcome = Some(outcome);
    Ok(report)
}

/// An interrupted restore leaves the new data directory behind: say so.
fn left_incomplete(error: Error, pgdata: &Path) -> Error {
    match error {
        Error::Interrupted(what) => Error::Interrupted(format!(
            "{what}; {} stays, restored only in part: remove it, or run recover again with --force",
            pgdata.display()
        )),
        other => other,
    }
}

/// The settings written into the restored directory. The restore_command of a copy of an
/// earlier generation names it: archive-get reads the current generation's WAL otherwise.
fn recovery_settings(plan: &Plan, options: &RecoverOptions) -> Vec<(&'static str, String)> {
    let restore_command = if plan.earlier_generation {
        format!(
            "{} archive-get --generation {} %f %p",
            options.pitr_command, plan.generation
        )
    } else {
        format!("{} archive-get %f %p", options.pitr_command)
    };
    let mut settings = vec![("restore_command", restore_command)];
    settings.extend(plan.target_settings());
    if !matches!(plan.recovery_target, Target::Latest) {
        settings.push(("recovery_target_action", options.action.setting().to_string()));
    }
    let timeline = match plan.timeline {
        TimelineChoice::Latest => "latest".to_string(),
        TimelineChoice::Number(n) => n.to_string(),
    };
    settings.push(("recovery_target_timeline", timeline));
    if !options.keep_archiving {
        settings.push(("archive_mode", "off".to_string()));
    }
    if let Some(port) = options.port {
        settings.push(("port", port.to_string()));
    }
    settings
}

/// Who will run the recovered server: the invoking user, or when pitr runs as root, the owner
/// of a local repository (the user archive_command runs as); for a remote repository, the owner
/// of the directory the new data directory goes into, else the `postgres` OS user.
pub(crate) fn owner_for(repo: &Repo, pgdata: &Path) -> Result<Owner> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Owner::of(pgdata);
    }
    if let Some(root) = repo.local_root() {
        return Owner::of(root);
    }
    let parent = pgdata.ancestors().skip(1).find(|dir| dir.is_dir());
    match parent.map(Owner::of) {
        Some(Ok(owner)) => Ok(owner),
        _ => Owner::named("postgres").map_err(|_| {
            Error::Refused(format!(
                "who should run the recovered server? The repository is remote, {} is owned by root and \
                 there is no postgres OS user: chown the directory above --pgdata to the PostgreSQL OS user",
                parent.unwrap_or(pgdata).display()
            ))
        }),
    }
}

/// How long a promoted copy may take until SQL sees the end of recovery.
const PROMOTION_WAIT_MS: u64 = 60_000;

/// The rows of `--verify-sql` (values as text, NULL as `None`), or the error it raised.
type VerifyOutcome = (Option<Vec<Vec<Option<String>>>>, Option<String>);

/// Reads the server's state and runs the verification query; a failing query is reported in
/// the result, not as an error, since the recovery itself succeeded.
async fn inspect(
    server: &RecoveryServer,
    options: &RecoverOptions,
    promoted: bool,
) -> Result<(ServerState, VerifyOutcome)> {
    let client = Server::connect(&server.connection("postgres")).await?;
    let state_sql =
        "SELECT pg_is_in_recovery()::text, pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()::text";
    let mut waited = 0;
    let row = loop {
        let row = client
            .query_rows(state_sql)
            .await?
            .into_iter()
            .next()
            .unwrap_or_default();
        // The server says it is ready before the end of recovery is visible to SQL: a promoted
        // copy is inspected once pg_is_in_recovery() is false.
        let in_recovery = row.first().cloned().flatten().as_deref() == Some("true");
        if !(promoted && in_recovery) || waited >= PROMOTION_WAIT_MS {
            break row;
        }
        interrupt::check("waiting for the promotion to finish")?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 100;
    };
    let field = |i: usize| row.get(i).cloned().flatten();
    let state = ServerState {
        in_recovery: field(0).as_deref() == Some("true"),
        replay_lsn: field(1),
        last_commit_time: field(2),
    };
    let Some(sql) = &options.verify_sql else {
        return Ok((state, (None, None)));
    };
    let result = match Server::connect(&server.connection(&options.verify_database)).await {
        Ok(client) => client.query_rows(sql).await,
        Err(e) => Err(e),
    };
    Ok(match result {
        Ok(rows) => (state, (Some(rows), None)),
        Err(e) => (state, (None, Some(e.to_string()))),
    })
}

/// What to do with a restored directory that has no postgresql.conf: a backup taken before pitr
/// stored configurations kept outside the data directory (manifest version 4).
fn without_configuration(options: &RecoverOptions) -> String {
    format!(
        "{0} is restored with its recovery settings but holds no postgresql.conf (the server's configuration \
         lay outside its data directory, and backups taken before pitr stored such a configuration lack it): \
         copy postgresql.conf, pg_hba.conf and pg_ident.conf into {0} without their data_directory, hba_file, \
         ident_file and external_pid_file lines, then start it with pg_ctl -D {0} start",
        options.pgdata.display()
    )
}

fn next_steps(plan: &Plan, options: &RecoverOptions, configuration: Option<&backup::OwnConfiguration>) -> Vec<String> {
    let data = options.pgdata.display();
    if plan.earlier_generation {
        return vec![format!(
            "this copy is PostgreSQL {} of generation {}, from before a major upgrade: take what you need from it \
             with PostgreSQL {}'s tools (pg_dump), then stop it (pg_ctl -D {data} stop, as its owner); `pitr adopt` \
             refuses it, since its cluster no longer archives into this repository",
            plan.pg_version, plan.generation, plan.pg_version
        )];
    }
    let mut steps = match options.action {
        Action::Pause => vec![
            "inspect the paused copy (read-only) with the psql line above; to accept this point run \
             SELECT pg_wal_replay_resume(); (promotes), or run recover again with another target"
                .to_string(),
        ],
        Action::Promote | Action::Shutdown => vec![],
    };
    steps.push(format!(
        "{} adopt --pgdata {data}: stops the copy's private run, archives its new timeline (history file, \
         .partial, new segments) and gives the copy its own configuration back, archiving into this repository",
        options.pitr_command
    ));
    steps.extend(
        match configuration.and_then(|c| Some((c, c.debian_cluster.as_ref()?))) {
            Some((configuration, cluster)) => switch_over_debian(options, configuration, cluster),
            None => switch_over(options),
        },
    );
    steps.push(format!(
        "take a new backup: {} backup --tier daily --fast (the new timeline needs its own)",
        options.pitr_command
    ));
    steps
}

/// Stop the old server, put the copy in its place.
fn switch_over(options: &RecoverOptions) -> [String; 2] {
    let data = options.pgdata.display();
    [
        "stop the old server (pg_ctl -D OLD stop -m fast, or systemctl stop postgresql) and keep its data \
         directory aside (mv OLD OLD.broken-$(date +%Y%m%d))"
            .to_string(),
        format!("move the copy into place (mv {data} OLD) or point the service at {data}, and start it"),
    ]
}

/// The same with postgresql-common's tools: the copy goes into the old cluster's data directory
/// (whose configuration in /etc applies again), or becomes a cluster of its own.
fn switch_over_debian(
    options: &RecoverOptions,
    configuration: &backup::OwnConfiguration,
    cluster: &backup::DebianCluster,
) -> [String; 2] {
    let data = options.pgdata.display();
    let old = &configuration.original_data_directory;
    let (version, name) = (&cluster.version, &cluster.name);
    [
        format!(
            "stop the old cluster (pg_ctlcluster {version} {name} stop) and keep its data directory aside \
             (mv {old} {old}.broken-$(date +%Y%m%d))"
        ),
        format!(
            "move the copy into place (mv {data} {old}; its postgresql.conf, pg_hba.conf and pg_ident.conf are \
             then unused: the cluster's own configuration in /etc/postgresql/{version}/{name} applies) and start \
             it: pg_ctlcluster {version} {name} start; or keep the copy where it is as a cluster of its own: \
             pg_createcluster {version} NEWNAME -d {data} (moves those three files into \
             /etc/postgresql/{version}/NEWNAME and gives it a free port; pg_lsclusters lists it), then \
             pg_ctlcluster {version} NEWNAME start"
        ),
    ]
}
