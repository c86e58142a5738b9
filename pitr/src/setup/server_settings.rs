//! The server's side of `pitr init`: what it runs with (`pg_settings`, and what its configuration
//! files hold in `pg_file_settings`), the archive settings pitr needs, and changing them through
//! `ALTER SYSTEM` (written to `postgresql.auto.conf`) and `pg_reload_conf()`.
//!
//! Wanted: `wal_level` replica (logical kept), `archive_mode` on (always kept), an
//! `archive_command` that runs pitr with this repository (one that does already is kept), no
//! `archive_library` (PostgreSQL 15 and later refuse both at once), and senders and slots for the
//! WAL receiver (`max_wal_senders`, `max_replication_slots`: 10 where they are 0).

use std::time::{Duration, Instant};

use super::{Change, TakesEffect};
use crate::backup::{pitr_archive_repo, PitrArchiving};
use crate::error::{Error, Result};
use crate::pg::Server;
use crate::progress::Progress;
use crate::storage::Location;

/// The settings pitr init reads, and may change.
const NAMES: [&str; 6] = [
    "wal_level",
    "archive_mode",
    "archive_command",
    "archive_library",
    "max_wal_senders",
    "max_replication_slots",
];

/// Senders and slots given to a server that has none (PostgreSQL's default).
const SENDERS_AND_SLOTS: &str = "10";

/// What PostgreSQL shows for archive_command while archiving is off, whatever it is set to
/// (`show_archive_command` in src/backend/access/transam/xlog.c).
const DISABLED: &str = "(disabled)";

/// How long a reloaded setting may take to show in this session.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// One setting as the server runs with it.
#[derive(Debug, Clone)]
struct Setting {
    name: String,
    value: String,
    /// `pg_settings.context`: `postmaster` needs a restart.
    context: String,
    /// `pg_settings.pending_restart`: the files hold another value, waiting for a restart.
    pending_restart: bool,
    /// The value the configuration files give it, when this role may read `pg_file_settings`.
    in_files: Option<String>,
}

/// What pitr init knows of the server.
#[derive(Debug, Clone)]
pub(super) struct ServerFacts {
    /// `data_directory`.
    pub data_directory: String,
    /// `config_file`.
    pub config_file: String,
    superuser: bool,
    replication: bool,
    settings: Vec<Setting>,
}

/// Reads the settings, the data directory and the configuration file of the server, and what
/// the connected role may do. A role that may not read `data_directory` is refused.
pub(super) async fn read(server: &Server) -> Result<ServerFacts> {
    let role = server
        .query(
            "SELECT current_user::text, rolsuper, rolreplication, pg_has_role('pg_read_all_settings', 'USAGE') \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let role = role
        .first()
        .ok_or_else(|| server.fail("the connected role is not in pg_roles".into()))?;
    let (user, superuser, replication, read_all): (String, bool, bool, bool) =
        (role.get(0), role.get(1), role.get(2), role.get(3));
    if !superuser && !read_all {
        return Err(server.fail(format!(
            "role {user} is not a superuser and may not read the server's data_directory and config_file: run \
             pitr init connected as a superuser (the postgres role: --dbname 'user=postgres', or PGUSER); \
             nothing was changed"
        )));
    }
    let names: Vec<&str> = NAMES.to_vec();
    let in_files = if superuser {
        server
            .query(
                "SELECT DISTINCT ON (name) name, setting FROM pg_file_settings WHERE name = ANY($1) AND error IS NULL \
                 ORDER BY name, seqno DESC",
                &[&names],
            )
            .await?
            .iter()
            .map(|row| (row.get::<_, String>(0), row.get::<_, Option<String>>(1)))
            .collect()
    } else {
        Vec::new()
    };
    let settings = server
        .query(
            "SELECT name, setting, context, pending_restart FROM pg_settings WHERE name = ANY($1) ORDER BY name",
            &[&names],
        )
        .await?
        .iter()
        .map(|row| {
            let name: String = row.get(0);
            let in_files = in_files.iter().find(|(n, _)| *n == name).and_then(|(_, v)| v.clone());
            let shown: String = row.get::<_, Option<String>>(1).unwrap_or_default();
            Setting {
                // While archiving is off, the files tell what archive_command is set to.
                value: if shown == DISABLED {
                    in_files.clone().unwrap_or_default()
                } else {
                    shown
                },
                in_files,
                context: row.get(2),
                pending_restart: row.get(3),
                name,
            }
        })
        .collect();
    Ok(ServerFacts {
        data_directory: server.setting("data_directory").await?,
        config_file: server.setting("config_file").await?,
        superuser,
        replication,
        settings,
    })
}

impl ServerFacts {
    fn value(&self, name: &str) -> Option<&str> {
        self.settings.iter().find(|s| s.name == name).map(|s| s.value.as_str())
    }

    /// Whether the running server can have a physical replication slot and stream from it.
    pub fn slots_possible(&self) -> bool {
        self.value("wal_level") != Some("minimal")
            && self.value("max_replication_slots") != Some("0")
            && self.value("max_wal_senders") != Some("0")
    }

    /// Refuses, before anything changes, a role that may not make the planned changes: ALTER
    /// SYSTEM and pg_reload_conf() (a superuser, or from PostgreSQL 15 the grants), a slot (a
    /// superuser or a role with REPLICATION).
    pub async fn check_privileges(&self, server: &Server, plan: &SettingsPlan, slot_missing: bool) -> Result<()> {
        let names: Vec<&str> = plan.changes.iter().map(|c| c.name.as_str()).collect();
        if !names.is_empty() && !self.superuser && !self.granted(server, &names).await? {
            return Err(server.fail(format!(
                "the connected role may not change {} with ALTER SYSTEM and pg_reload_conf(): run pitr init \
                 connected as a superuser (--dbname 'user=postgres', or PGUSER); nothing was changed",
                names.join(", ")
            )));
        }
        if slot_missing && !self.superuser && !self.replication {
            return Err(server.fail(
                "the connected role may not create a replication slot (it needs REPLICATION): run pitr init \
                 connected as a superuser (--dbname 'user=postgres', or PGUSER); nothing was changed"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether the role was granted ALTER SYSTEM on each of `names` and EXECUTE on
    /// pg_reload_conf() (PostgreSQL 15 and later; before, only a superuser may).
    async fn granted(&self, server: &Server, names: &[&str]) -> Result<bool> {
        if server.major_version().major() < 15 {
            return Ok(false);
        }
        let rows = server
            .query(
                "SELECT bool_and(has_parameter_privilege(n, 'ALTER SYSTEM')) \
                 AND has_function_privilege('pg_reload_conf()', 'EXECUTE') FROM unnest($1::text[]) AS n",
                &[&names],
            )
            .await?;
        Ok(rows.first().and_then(|r| r.get::<_, Option<bool>>(0)).unwrap_or(false))
    }
}

/// One setting to change.
#[derive(Debug, Clone)]
struct SettingChange {
    name: String,
    current: String,
    wanted: String,
    takes_effect: TakesEffect,
}

/// The settings to change, and those set already but waiting for a restart.
#[derive(Debug, Clone)]
pub(super) struct SettingsPlan {
    changes: Vec<SettingChange>,
    awaiting_restart: Vec<String>,
}

/// What archiving through pitr into `repo` with `archive_command` needs of `facts`' settings.
pub(super) fn plan(facts: &ServerFacts, archive_command: &str, repo: &Location) -> SettingsPlan {
    let mut plan = SettingsPlan {
        changes: Vec::new(),
        awaiting_restart: Vec::new(),
    };
    for setting in &facts.settings {
        let Some(wanted) = wanted(setting, archive_command, repo) else {
            continue;
        };
        if setting.pending_restart && setting.in_files.as_deref() == Some(wanted.as_str()) {
            plan.awaiting_restart.push(setting.name.clone());
            continue;
        }
        plan.changes.push(SettingChange {
            name: setting.name.clone(),
            current: setting.value.clone(),
            wanted,
            takes_effect: if setting.context == "postmaster" {
                TakesEffect::Restart
            } else {
                TakesEffect::Reload
            },
        });
    }
    plan
}

/// The value `setting` must take, when it is not right as it is.
fn wanted(setting: &Setting, archive_command: &str, repo: &Location) -> Option<String> {
    let value = setting.value.as_str();
    let wanted = match setting.name.as_str() {
        "wal_level" => (value == "minimal").then_some("replica"),
        "archive_mode" => (value == "off").then_some("on"),
        "archive_command" => match pitr_archive_repo(value) {
            PitrArchiving::Into(into) if repo.is_same_as(&into) => None,
            _ => Some(archive_command),
        },
        "archive_library" => (!value.is_empty()).then_some(""),
        "max_wal_senders" | "max_replication_slots" => (value == "0").then_some(SENDERS_AND_SLOTS),
        _ => None,
    };
    wanted.map(str::to_string)
}

impl SettingsPlan {
    /// The changes, for the report.
    pub fn changes(&self) -> Vec<Change> {
        let shown = |value: &str| {
            if value.is_empty() {
                "(empty)".to_string()
            } else {
                value.to_string()
            }
        };
        self.changes
            .iter()
            .map(|c| Change {
                what: c.name.clone(),
                current: shown(&c.current),
                wanted: shown(&c.wanted),
                takes_effect: c.takes_effect,
            })
            .collect()
    }

    /// The settings that wait for a restart: those set already, and with `applied` those this
    /// plan changed that need one.
    pub fn restart_pending(&self, applied: bool) -> Vec<String> {
        let changed = self
            .changes
            .iter()
            .filter(|c| applied && c.takes_effect == TakesEffect::Restart)
            .map(|c| c.name.clone());
        let mut names: Vec<String> = self.awaiting_restart.iter().cloned().chain(changed).collect();
        names.sort();
        names
    }

    /// ALTER SYSTEM for each change, then pg_reload_conf(), and waits until the settings a reload
    /// changes show in this session.
    pub async fn apply(&self, server: &Server, progress: &dyn Progress) -> Result<()> {
        if self.changes.is_empty() {
            return Ok(());
        }
        for change in &self.changes {
            progress.status(&format!("ALTER SYSTEM SET {}", change.name));
            // The server quotes: format()'s %I and %L.
            let rows = server
                .query(
                    "SELECT format('ALTER SYSTEM SET %I = %L', $1::text, $2::text)",
                    &[&change.name, &change.wanted],
                )
                .await?;
            let statement: String = rows
                .first()
                .map(|r| r.get(0))
                .ok_or_else(|| server.fail("format() returned no row".into()))?;
            server.query_rows(&statement).await?;
        }
        server.query_rows("SELECT pg_reload_conf()").await?;
        for change in self.changes.iter().filter(|c| c.takes_effect == TakesEffect::Reload) {
            wait_for_reload(server, &change.name, &change.wanted).await?;
        }
        Ok(())
    }
}

/// Waits until `name` shows `wanted` after pg_reload_conf(): the reload is a signal, taken in
/// this session between two queries.
async fn wait_for_reload(server: &Server, name: &str, wanted: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        let shown = server.setting(name).await?;
        // Archiving is off until a restart: archive_command shows nothing else meanwhile.
        if shown == wanted || shown == DISABLED {
            return Ok(());
        }
        if started.elapsed() > RELOAD_WAIT {
            return Err(Error::Server {
                target: server.target().to_string(),
                reason: format!(
                    "{name} was set with ALTER SYSTEM, but the reload did not apply it within {} s: the server log \
                     says why (a setting in postgresql.conf that does not parse?)",
                    RELOAD_WAIT.as_secs()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(name: &str, value: &str) -> Setting {
        Setting {
            name: name.into(),
            value: value.into(),
            context: "postmaster".into(),
            pending_restart: false,
            in_files: None,
        }
    }

    fn wanted_for(name: &str, value: &str) -> Option<String> {
        let repo = Location::parse("/var/backups/pitr").unwrap();
        wanted(
            &setting(name, value),
            "/usr/bin/pitr --repo /var/backups/pitr archive-push %p",
            &repo,
        )
    }

    #[test]
    fn only_what_is_not_right_is_changed() {
        assert_eq!(wanted_for("wal_level", "minimal").as_deref(), Some("replica"));
        assert_eq!(wanted_for("wal_level", "logical"), None);
        assert_eq!(wanted_for("archive_mode", "off").as_deref(), Some("on"));
        assert_eq!(wanted_for("archive_mode", "always"), None);
        assert_eq!(wanted_for("archive_library", "basic_archive").as_deref(), Some(""));
        assert_eq!(wanted_for("archive_library", ""), None);
        assert_eq!(wanted_for("max_wal_senders", "0").as_deref(), Some("10"));
        assert_eq!(wanted_for("max_replication_slots", "4"), None);
    }

    #[test]
    fn an_archive_command_into_this_repository_is_kept_and_any_other_replaced() {
        let into_this = "/usr/local/bin/pitr --repo '/var/backups/pitr' archive-push %p";
        assert_eq!(wanted_for("archive_command", into_this), None);
        for other in [
            "",
            "cp %p /mnt/wal/%f",
            "/usr/local/bin/pitr --repo /elsewhere archive-push %p",
        ] {
            assert!(
                wanted_for("archive_command", other).is_some(),
                "{other:?} must be replaced"
            );
        }
    }

    #[test]
    fn a_setting_set_already_and_waiting_for_a_restart_is_not_planned_again() {
        let facts = ServerFacts {
            data_directory: "/data".into(),
            config_file: "/data/postgresql.conf".into(),
            superuser: true,
            replication: true,
            settings: vec![Setting {
                pending_restart: true,
                in_files: Some("on".into()),
                ..setting("archive_mode", "off")
            }],
        };
        let plan = plan(&facts, "pitr archive-push %p", &Location::parse("/r").unwrap());
        assert!(plan.changes().is_empty());
        assert_eq!(plan.restart_pending(false), ["archive_mode"]);
    }
}
