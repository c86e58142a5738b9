//! Names for what WAL records only number: which schema-qualified relation a relfilenode was,
//! and which database an OID was, at each point of the WAL.
//!
//! WAL names a relation by its storage ([`RelFileLocator`]) and a database by its OID; once a
//! table is dropped its name is gone from the catalog. So pitr records a [`NamesMap`] (every
//! database's relations with storage, by relfilenode, and the databases by OID) at every backup
//! and restore point, and the daemon records a new one when the catalog changed. The maps are
//! stored per generation (`<wal dir>names/<LSN>.json`, see [`crate::repo`]), as checksummed JSON
//! records, create-only.
//!
//! [`Names`] answers for an LSN with the maps around it: the newest map taken at or before the
//! LSN that knows the relfilenode (the relation existed then, under that name), else the oldest
//! later map that knows it (a relation created after the map before it). A relfilenode no map
//! knows stays a number.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::pg::Server;
use crate::progress::Progress;
use crate::repo::Repo;
use crate::wal::{Lsn, RelFileLocator};

/// `GLOBALTABLESPACE_OID`: where shared catalogs live.
const GLOBAL_TABLESPACE: u32 = 1664;

/// One relation with storage, as the catalog named it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationName {
    /// Its schema (`pg_namespace.nspname`).
    pub schema: String,
    /// Its name (`pg_class.relname`).
    pub name: String,
    /// `pg_class.relkind`: `r` table, `i` index, `t` TOAST table, `m` materialized view, `S`
    /// sequence, `p`/`I` partitioned (no storage, never listed).
    pub kind: char,
}

impl RelationName {
    /// `schema.name`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// A database, as `pg_database` named it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseName {
    /// Its OID.
    pub oid: u32,
    /// Its name.
    pub name: String,
}

/// One relation's entry in a map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedRelation {
    /// Its storage.
    pub storage: RelFileLocator,
    /// Its name.
    #[serde(flatten)]
    pub name: RelationName,
}

/// The names valid at one point of the WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamesMap {
    /// The server's insert position when the map was taken (replay position on a standby):
    /// the map describes the catalog of the WAL from about here.
    pub lsn: Lsn,
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// The databases.
    pub databases: Vec<DatabaseName>,
    /// The relations with storage of every database that accepts connections, and the shared
    /// catalogs (database 0).
    pub relations: Vec<MappedRelation>,
    /// Databases that accept connections but refused pitr's (their relations are missing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

impl NamesMap {
    /// Whether `other` names the same things (their positions aside): no need to store it again.
    pub fn same_names(&self, other: &NamesMap) -> bool {
        self.databases == other.databases && self.relations == other.relations
    }

    fn sorted(mut self) -> NamesMap {
        self.databases.sort_by_key(|d| d.oid);
        self.relations.sort_by_key(|r| r.storage);
        self.relations.dedup_by_key(|r| r.storage);
        self
    }
}

/// The relations of one database with storage: relfilenode, tablespace, shared, schema, name,
/// relkind. Mapped catalogs (`relfilenode = 0`) are resolved by `pg_relation_filenode`.
const RELATIONS_QUERY: &str =
    "SELECT pg_relation_filenode(c.oid)::oid::bigint, c.reltablespace::bigint, c.relisshared, \
     n.nspname::text, c.relname::text, c.relkind::text \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE pg_relation_filenode(c.oid) IS NOT NULL \
     AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'";

/// The databases: OID, name, default tablespace, whether it accepts connections.
const DATABASES_QUERY: &str =
    "SELECT oid::bigint, datname::text, dattablespace::bigint, datallowconn FROM pg_database ORDER BY oid";

/// Takes the map of `server`: the database list from its connection, then each database that
/// accepts connections, through a connection of its own.
pub async fn capture(server: &Server) -> Result<NamesMap> {
    let lsn = position(server).await?;
    let mut databases = Vec::new();
    let mut relations = Vec::new();
    let mut unreadable = Vec::new();
    for row in server.query_rows(DATABASES_QUERY).await? {
        let [oid, name, tablespace, allow] = row_fields(row, server, "pg_database")?;
        let oid = oid_of(&oid, server)?;
        let name = name.unwrap_or_default();
        databases.push(DatabaseName {
            oid,
            name: name.clone(),
        });
        if allow.as_deref() != Some("t") {
            continue;
        }
        let Ok(db_server) = server.in_database(&name).await else {
            unreadable.push(name);
            continue;
        };
        let default_tablespace = oid_of(&tablespace, server)?;
        for row in db_server.query_rows(RELATIONS_QUERY).await? {
            let [rel, spc, shared, schema, relname, kind] = row_fields(row, &db_server, "pg_class")?;
            let shared = shared.as_deref() == Some("t");
            let spc = match oid_of(&spc, &db_server)? {
                0 => default_tablespace,
                spc => spc,
            };
            relations.push(MappedRelation {
                storage: RelFileLocator {
                    spc: if shared { GLOBAL_TABLESPACE } else { spc },
                    db: if shared { 0 } else { oid },
                    rel: oid_of(&rel, &db_server)?,
                },
                name: RelationName {
                    schema: schema.unwrap_or_default(),
                    name: relname.unwrap_or_default(),
                    kind: kind.and_then(|k| k.chars().next()).unwrap_or('?'),
                },
            });
        }
    }
    Ok(NamesMap {
        lsn,
        time: Utc::now(),
        databases,
        relations,
        unreadable,
    }
    .sorted())
}

/// Where the server's WAL stands: the insert position, or the replay position on a standby.
async fn position(server: &Server) -> Result<Lsn> {
    let rows = server.query_rows(POSITION_QUERY).await?;
    let text = rows.into_iter().next().and_then(|r| r.into_iter().next().flatten());
    text.as_deref()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| server.fail(format!("no WAL position from the server: {text:?}")))
}

const POSITION_QUERY: &str = "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
     ELSE pg_current_wal_insert_lsn() END::text";

fn row_fields<const N: usize>(row: Vec<Option<String>>, server: &Server, what: &str) -> Result<[Option<String>; N]> {
    row.try_into()
        .map_err(|_| server.fail(format!("the {what} query returned an unexpected row")))
}

fn oid_of(field: &Option<String>, server: &Server) -> Result<u32> {
    field
        .as_deref()
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| server.fail(format!("the catalog returned {field:?} for an OID")))
}

/// What [`record`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    /// The new map's LSN; `None` when the newest stored map names the same things.
    pub recorded: Option<Lsn>,
    /// The databases named.
    pub databases: usize,
    /// The relations named.
    pub relations: usize,
    /// Databases pitr could not connect to.
    pub unreadable: Vec<String>,
}

/// Takes the map of `server` and stores it in `repo`, unless the newest stored one names the
/// same things. An empty repository is claimed for the server's cluster, as a backup does; the
/// repository of another cluster is refused.
pub async fn record(repo: &Repo, server: &Server) -> Result<Recorded> {
    let found = crate::backup::cluster_identity(server).await?;
    let repo = &crate::backup::bind(repo, found, "record the names of")?;
    let map = capture(server).await?;
    let unchanged = repo
        .newest_names()?
        .is_some_and(|newest| newest.lsn <= map.lsn && newest.same_names(&map));
    if !unchanged {
        repo.put_names(&map)?;
    }
    Ok(Recorded {
        recorded: (!unchanged).then_some(map.lsn),
        databases: map.databases.len(),
        relations: map.relations.len(),
        unreadable: map.unreadable,
    })
}

/// Records the map of `server` as [`record`] does, for a backup or restore point: a failure is
/// a warning, since the names of this stretch of WAL then come from the maps around it.
pub async fn record_beside(what: &str, repo: &Repo, server: &Server, progress: &dyn Progress) {
    match record(repo, server).await {
        Ok(recorded) if !recorded.unreadable.is_empty() => progress.warn(&format!(
            "the map of relation names lacks databases {} (pitr's role may not connect to them)",
            recorded.unreadable.join(", ")
        )),
        Ok(_) => {}
        Err(e) => progress.warn(&format!(
            "{what} stands, but the map of relation names was not recorded ({e}); \
             `pitr wal events` names what it cannot from the maps around it"
        )),
    }
}

/// The maps of one generation, for lookups by LSN.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// By the LSN they were taken at.
    maps: BTreeMap<Lsn, Indexed>,
}

#[derive(Debug, Clone)]
struct Indexed {
    relations: HashMap<RelFileLocator, RelationName>,
    databases: HashMap<u32, String>,
}

impl Names {
    /// The maps stored in the repository (for its current or pinned generation).
    pub fn load(repo: &Repo) -> Result<Names> {
        Ok(Names::from_maps(repo.names_maps()?))
    }

    /// Names from these maps.
    pub fn from_maps(maps: impl IntoIterator<Item = NamesMap>) -> Names {
        let maps = maps
            .into_iter()
            .map(|map| {
                let indexed = Indexed {
                    relations: map.relations.into_iter().map(|r| (r.storage, r.name)).collect(),
                    databases: map.databases.into_iter().map(|d| (d.oid, d.name)).collect(),
                };
                (map.lsn, indexed)
            })
            .collect();
        Names { maps }
    }

    /// How many maps there are.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// The relation stored in `storage` at `at`.
    pub fn relation(&self, at: Lsn, storage: RelFileLocator) -> Option<&RelationName> {
        self.around(at, |map| map.relations.get(&storage))
    }

    /// The database `oid` at `at`.
    pub fn database(&self, at: Lsn, oid: u32) -> Option<&str> {
        self.around(at, |map| map.databases.get(&oid).map(String::as_str))
    }

    /// The newest map at or before `at` that answers, else the oldest later one.
    fn around<'a, T: ?Sized>(&'a self, at: Lsn, answer: impl Fn(&'a Indexed) -> Option<&'a T>) -> Option<&'a T> {
        self.maps
            .range(..=at)
            .rev()
            .find_map(|(_, map)| answer(map))
            .or_else(|| self.maps.range(at..).find_map(|(_, map)| answer(map)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(lsn: u64, relations: &[(u32, &str)]) -> NamesMap {
        NamesMap {
            lsn: Lsn(lsn),
            time: Utc::now(),
            databases: vec![DatabaseName {
                oid: 5,
                name: format!("db_at_{lsn}"),
            }],
            relations: relations
                .iter()
                .map(|(rel, name)| MappedRelation {
                    storage: RelFileLocator {
                        spc: 1663,
                        db: 5,
                        rel: *rel,
                    },
                    name: RelationName {
                        schema: "public".into(),
                        name: (*name).into(),
                        kind: 'r',
                    },
                })
                .collect(),
            unreadable: Vec::new(),
        }
    }

    fn name_of(names: &Names, at: u64, rel: u32) -> Option<String> {
        names
            .relation(Lsn(at), RelFileLocator { spc: 1663, db: 5, rel })
            .map(RelationName::qualified)
    }

    #[test]
    fn the_map_valid_at_an_lsn_answers_and_later_maps_name_newer_relations() {
        let names = Names::from_maps([
            map(100, &[(1, "old_name"), (2, "dropped_later")]),
            map(200, &[(1, "new_name"), (3, "created_after_100")]),
        ]);
        assert_eq!(name_of(&names, 150, 1).as_deref(), Some("public.old_name"));
        assert_eq!(name_of(&names, 250, 1).as_deref(), Some("public.new_name"));
        assert_eq!(name_of(&names, 250, 2).as_deref(), Some("public.dropped_later"));
        assert_eq!(name_of(&names, 150, 3).as_deref(), Some("public.created_after_100"));
        assert_eq!(name_of(&names, 50, 1).as_deref(), Some("public.old_name"));
        assert_eq!(name_of(&names, 150, 4), None);
        assert_eq!(names.database(Lsn(150), 5), Some("db_at_100"));
        assert_eq!(names.database(Lsn(150), 6), None);
    }

    #[test]
    fn maps_compare_by_their_names_only() {
        let a = map(100, &[(1, "t")]).sorted();
        let mut b = map(200, &[(1, "t")]).sorted();
        b.databases[0].name = "db_at_100".into();
        assert!(a.same_names(&b));
        assert!(!a.same_names(&map(100, &[(1, "u")])));
    }
}
