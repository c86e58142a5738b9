//! `pitr init`: from a running server to a verified archive in one command.
//!
//! It reads what the server runs with over its connection and plans what must change: the
//! archive settings ([`server_settings`], applied through `ALTER SYSTEM`), the WAL receiver's
//! physical replication slot, the repository (created for the cluster, owned by the data
//! directory's owner) and pitr's config file ([`config_file`]). Without `apply` it changes
//! nothing. With `apply` it checks every permission first, then makes the changes, and never
//! restarts the server: the settings that wait for a restart are named. Once nothing waits for
//! one, it runs [`check`](crate::verify::check). A second run finds nothing to change.

mod config_file;
mod server_settings;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::backup::cluster_identity;
use crate::error::{Error, Result};
use crate::fsio::{Dir, Perms};
use crate::generations::create_repo;
use crate::pg::ctl::Owner;
use crate::pg::Server;
use crate::progress::Progress;
use crate::repo::{Cluster, Repo};
use crate::storage::Location;
use crate::stream::StreamOptions;
use crate::verify::{CheckOptions, CheckReport};

pub use config_file::DEFAULT_CONFIG_FILE;

/// What `pitr init` is asked to do.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The data directory as the operator named it (`--pgdata` or `pgdata`); `None`: the
    /// server's `data_directory`.
    pub pgdata: Option<PathBuf>,
    /// The repository.
    pub repo: Location,
    /// The keys it is read and written with (an encrypted one is created when recipients are given).
    pub keys: std::sync::Arc<crate::crypt::Keys>,
    /// pitr's config file to write (absolute).
    pub config_file: PathBuf,
    /// The WAL receiver's slot, and how to reach the server to create it (as `pitr slot`).
    pub stream: StreamOptions,
    /// This pitr with the repository and the config file, quoted for the shell
    /// (`/usr/bin/pitr --repo ... --config ...`): the archive_command is it and `archive-push %p`.
    pub pitr_command: String,
    /// Make the changes (otherwise only plan them).
    pub apply: bool,
    /// How long `check` waits for the switched segment.
    pub check_timeout: Duration,
}

/// When a change takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TakesEffect {
    /// At the next restart of PostgreSQL (`pg_settings.context` is `postmaster`).
    Restart,
    /// At the reload `pitr init` asks for.
    Reload,
    /// At once.
    Now,
}

/// One thing `pitr init` changes.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// What: a setting's name, `slot NAME`, `repository DIR` or `config file PATH`.
    pub what: String,
    /// What it is now.
    pub current: String,
    /// What it becomes.
    pub wanted: String,
    /// When the change takes effect.
    pub takes_effect: TakesEffect,
}

/// Whether `check` ran, and how it went.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum CheckOutcome {
    /// A dry run checks nothing.
    NotRun,
    /// Settings wait for a restart: check after it (`pitr check`, or `pitr init` again).
    AfterRestart,
    /// Archiving works, end to end.
    Passed {
        /// What check saw (boxed: it is much larger than the other outcomes).
        report: Box<CheckReport>,
    },
    /// Archiving does not work yet.
    Failed {
        /// Why.
        error: String,
    },
}

/// What `pitr init` found, planned and did.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    /// The server.
    pub server: String,
    /// Its major version.
    pub server_version: u32,
    /// Its data directory.
    pub data_directory: PathBuf,
    /// Its configuration file (`config_file`).
    pub server_config_file: String,
    /// The OS user that owns the data directory (and so the repository).
    pub owner: String,
    /// What must change (with `apply`: what was changed).
    pub changes: Vec<Change>,
    /// Whether the changes were made.
    pub applied: bool,
    /// The settings that are set in the configuration files but wait for a restart of
    /// PostgreSQL.
    pub restart_pending: Vec<String>,
    /// The end-to-end check.
    pub check: CheckOutcome,
}

impl InitReport {
    /// Whether anything remains to be done: changes to apply (dry run), or a restart.
    pub fn pending(&self) -> bool {
        (!self.applied && !self.changes.is_empty()) || !self.restart_pending.is_empty()
    }
}

/// Plans, and with `options.apply` makes, what the server behind `server` needs to archive
/// into `options.repo` through pitr (see the module documentation).
pub async fn init(server: &Server, options: &InitOptions, progress: &dyn Progress) -> Result<InitReport> {
    if server.is_in_recovery().await? {
        return Err(server.fail("is a standby or in recovery: run pitr init against the primary".into()));
    }
    let facts = server_settings::read(server).await?;
    let pgdata = data_directory(options.pgdata.as_deref(), &facts.data_directory)?;
    let owner = Owner::of(&pgdata)?;
    check_runner(&owner)?;
    let cluster = cluster_identity(server).await?;
    let slot = &options.stream.slot;
    let archive_command = format!("{} archive-push %p", options.pitr_command);
    let plan = Plan {
        repository: plan_repository(&options.repo, cluster, &owner)?,
        config: config_file::plan(&options.config_file, &options.repo, &pgdata, slot, &owner)?,
        settings: server_settings::plan(&facts, &archive_command, &options.repo),
        slot_missing: server.replication_slot(slot).await?.is_none(),
    };
    let mut report = InitReport {
        server: server.target().to_string(),
        server_version: server.major_version().major(),
        data_directory: pgdata,
        server_config_file: facts.config_file.clone(),
        owner: owner.name.clone(),
        changes: plan.changes(options, &facts, &owner),
        applied: false,
        restart_pending: plan.settings.restart_pending(false),
        check: CheckOutcome::NotRun,
    };
    if !options.apply {
        return Ok(report);
    }
    facts
        .check_privileges(server, &plan.settings, plan.slot_missing)
        .await?;
    apply(server, options, &plan, &owner, progress).await?;
    report.applied = true;
    report.restart_pending = plan.settings.restart_pending(true);
    report.check = if report.restart_pending.is_empty() {
        let repo = Repo::open(&options.repo)?.with_keys(options.keys.clone());
        let check_options = CheckOptions {
            timeout: options.check_timeout,
            slot: Some(slot.clone()),
        };
        match crate::verify::check(&repo, server, check_options, progress).await {
            Ok(report) => CheckOutcome::Passed {
                report: Box::new(report),
            },
            Err(e) => CheckOutcome::Failed { error: e.to_string() },
        }
    } else {
        CheckOutcome::AfterRestart
    };
    Ok(report)
}

/// What `pitr init` found to change.
struct Plan {
    repository: RepositoryPlan,
    config: config_file::ConfigPlan,
    settings: server_settings::SettingsPlan,
    slot_missing: bool,
}

impl Plan {
    /// The changes, in the order they are made.
    fn changes(&self, options: &InitOptions, facts: &server_settings::ServerFacts, owner: &Owner) -> Vec<Change> {
        let mut changes = Vec::new();
        if let Some(current) = self.repository.current() {
            changes.push(Change {
                what: format!("repository {}", options.repo),
                current: current.into(),
                wanted: match options.repo {
                    Location::Local(_) => format!("created for this cluster (0700, owner {})", owner.name),
                    Location::S3(_) => "created for this cluster".into(),
                },
                takes_effect: TakesEffect::Now,
            });
        }
        if let Some(current) = self.config.current() {
            changes.push(Change {
                what: format!("config file {}", options.config_file.display()),
                current: current.into(),
                wanted: format!("repo, pgdata and slot set ({})", config_file::describe_perms(owner)),
                takes_effect: TakesEffect::Now,
            });
        }
        changes.extend(self.settings.changes());
        if self.slot_missing {
            let now = facts.slots_possible();
            changes.push(Change {
                what: format!("slot {}", options.stream.slot),
                current: "absent".into(),
                wanted: "a physical replication slot for the WAL receiver (pitr daemon or pitr watch)".into(),
                takes_effect: if now { TakesEffect::Now } else { TakesEffect::Restart },
            });
        }
        changes
    }
}

/// Makes the planned changes: the repository and the config file first, so that the new
/// archive_command finds them; then the settings; then the slot, when the running server can
/// have one.
async fn apply(
    server: &Server,
    options: &InitOptions,
    plan: &Plan,
    owner: &Owner,
    progress: &dyn Progress,
) -> Result<()> {
    if let RepositoryPlan::CreateDirectory = plan.repository {
        create_repository_directory(&options.repo, owner)?;
    }
    if plan.repository.current().is_some() {
        create_repo(&Repo::open(&options.repo)?.with_keys(options.keys.clone()), server).await?;
    }
    config_file::write(&options.config_file, &plan.config, owner)?;
    plan.settings.apply(server, progress).await?;
    if plan.slot_missing {
        let facts = server_settings::read(server).await?;
        if facts.slots_possible() {
            let stream = options.stream.clone();
            tokio::task::block_in_place(|| crate::stream::create_slot(&stream))?;
        }
    }
    Ok(())
}

/// The data directory: the one named, which must be the server's, or the server's.
fn data_directory(named: Option<&Path>, servers: &str) -> Result<PathBuf> {
    let servers = Path::new(servers);
    let Some(named) = named else {
        return Ok(servers.to_path_buf());
    };
    let resolve = |path: &Path| std::fs::canonicalize(path).map_err(Error::io("resolve", path));
    if resolve(named)? != resolve(servers)? {
        return Err(Error::Refused(format!(
            "{} is not the data directory of the server pitr connected to, which runs in {}: pass --pgdata {} \
             or connect to the server of {} (--dbname, PGHOST, PGPORT); nothing was changed",
            named.display(),
            servers.display(),
            servers.display(),
            named.display()
        )));
    }
    Ok(named.to_path_buf())
}

/// pitr init writes as root (for the data directory's owner) or as that owner: the repository
/// and the config file must be the owner's to use, since archive_command runs as the owner.
fn check_runner(owner: &Owner) -> Result<()> {
    let me = rustix::process::geteuid().as_raw();
    if me == 0 || me == owner.uid {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "pitr init runs as root or as {0}, the owner of the data directory (archive_command runs as {0}, and \
         must own the repository and read the config file): run it with sudo, or as {0}; nothing was changed",
        owner.name
    )))
}

/// What the repository needs.
enum RepositoryPlan {
    /// It is this cluster's already.
    Ready,
    /// Its directory (or S3 prefix) is there without repo.json: `create-repo`.
    Record,
    /// Its directory is missing: create it, then `create-repo`.
    CreateDirectory,
}

impl RepositoryPlan {
    /// What it is now, when something must change.
    fn current(&self) -> Option<&'static str> {
        match self {
            RepositoryPlan::Ready => None,
            RepositoryPlan::Record => Some("no repo.json"),
            RepositoryPlan::CreateDirectory => Some("absent"),
        }
    }
}

/// Whether the repository is `cluster`'s, can become it, or is refused (another cluster's; a
/// directory owned by another user than the data directory's owner; a missing parent directory,
/// as an unmounted disk would be).
fn plan_repository(location: &Location, cluster: Cluster, owner: &Owner) -> Result<RepositoryPlan> {
    if let Some(path) = location.local_path() {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = parent_of(path)?;
                if !parent.is_dir() {
                    return Err(Error::Refused(format!(
                        "cannot create repository {}: its parent directory {} does not exist (is the backup disk \
                         mounted?); create it, or choose another --repo; nothing was changed",
                        path.display(),
                        parent.display()
                    )));
                }
                check_writable(&parent, "create repository", path)?;
                return Ok(RepositoryPlan::CreateDirectory);
            }
            Err(e) => return Err(Error::io("inspect", path)(e)),
            Ok(meta) => check_repository_directory(path, &meta, owner)?,
        }
    }
    let repo = Repo::open(location)?;
    match repo.generations()? {
        None => Ok(RepositoryPlan::Record),
        Some(generations) if generations.current().cluster() == cluster => Ok(RepositoryPlan::Ready),
        Some(generations) => Err(Error::Refused(format!(
            "repository {} was not created for this server: {}; nothing was changed",
            repo.location(),
            generations.refusal(cluster, &repo.location())
        ))),
    }
}

/// An existing repository directory must be a directory of the data directory's owner.
fn check_repository_directory(path: &Path, meta: &std::fs::Metadata, owner: &Owner) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(Error::Refused(format!(
            "repository {} is not a directory; choose another --repo; nothing was changed",
            path.display()
        )));
    }
    if meta.uid() != owner.uid {
        return Err(Error::Refused(format!(
            "repository {} is owned by uid {}, not by {} (the owner of the data directory, who runs \
             archive_command): chown -R {} it, or choose another --repo; nothing was changed",
            path.display(),
            meta.uid(),
            owner.name,
            owner.name
        )));
    }
    Ok(())
}

/// Creates the repository's directory, 0700, for the data directory's owner (when pitr runs
/// as root; otherwise pitr is that owner).
fn create_repository_directory(location: &Location, owner: &Owner) -> Result<()> {
    let path = location
        .local_path()
        .expect("only a local repository has a directory to create");
    let parent = parent_of(path)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::InvalidInput(format!("repository {} has no UTF-8 name", path.display())))?;
    let as_root = rustix::process::geteuid().is_root();
    let perms = Perms::private(as_root.then_some((owner.uid, owner.gid)));
    Dir::open(&parent)
        .and_then(|dir| dir.create_dir(name, &perms))
        .map_err(Error::io("create repository directory", path))?;
    Ok(())
}

/// Refuses, before anything changes, to `action` `target` in directory `dir` that this user may
/// not write.
pub(crate) fn check_writable(dir: &Path, action: &str, target: &Path) -> Result<()> {
    let access = rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK;
    rustix::fs::access(dir, access).map_err(|e| {
        Error::Refused(format!(
            "cannot {action} {}: directory {} is not writable by this user ({e}): run pitr init as root, or \
             choose another place; nothing was changed",
            target.display(),
            dir.display()
        ))
    })
}

/// The directory holding `path` (made absolute).
fn parent_of(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path).map_err(Error::io("resolve", path))?;
    absolute
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::InvalidInput(format!("repository {} is the root directory", path.display())))
}
