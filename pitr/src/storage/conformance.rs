//! The storage contract as tests. Every backend runs [`check_backend`]; a new backend adds one
//! test below that hands it a fresh, empty store.

use std::sync::Arc;

use super::{LocalStorage, PutOutcome, Storage};

/// Runs every contract check against an empty store.
fn check_backend(store: Arc<dyn Storage>) {
    absent_object_is_none(&*store);
    put_then_get_round_trips(&*store);
    second_put_keeps_the_first_object(&*store);
    deferred_puts_are_create_only_and_synced_together(&*store);
    concurrent_puts_create_exactly_once(store.clone());
    empty_and_large_objects_round_trip(&*store);
    list_shows_children_sorted(&*store);
    list_meta_tells_what_head_tells(&*store);
    delete_removes_objects(&*store);
    locks_are_exclusive_until_dropped(&*store);
    available_bytes_is_plausible(&*store);
}

fn available_bytes_is_plausible(store: &dyn Storage) {
    if let Some(bytes) = store.available_bytes().unwrap() {
        assert!(bytes > 0);
    }
}

fn list_shows_children_sorted(store: &dyn Storage) {
    store.put_if_absent("l/b", b"").unwrap();
    store.put_if_absent("l/a", b"").unwrap();
    store.put_if_absent("l/sub/c", b"").unwrap();
    assert_eq!(store.list("l/").unwrap(), vec!["a", "b", "sub/"]);
    assert_eq!(store.list("l/sub/").unwrap(), vec!["c"]);
    assert!(store.list("missing/").unwrap().is_empty());
}

fn list_meta_tells_what_head_tells(store: &dyn Storage) {
    store.put_if_absent("m/b", b"bb").unwrap();
    store.put_if_absent("m/a", b"a").unwrap();
    store.put_if_absent("m/sub/c", b"").unwrap();
    let listed = store.list_meta("m/").unwrap();
    let names: Vec<&str> = listed.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, store.list("m/").unwrap());
    for entry in &listed {
        let expected = match entry.name.ends_with('/') {
            true => None,
            false => store.head(&format!("m/{}", entry.name)).unwrap(),
        };
        assert_eq!(entry.meta, expected, "{}", entry.name);
    }
    assert_eq!(listed[1].meta.map(|m| m.size), Some(2));
    assert!(store.list_meta("missing/").unwrap().is_empty());
}

fn delete_removes_objects(store: &dyn Storage) {
    store.put_if_absent("d/x/1", b"1").unwrap();
    store.put_if_absent("d/x/2", b"2").unwrap();
    store.put_if_absent("d/y", b"3").unwrap();
    store.delete("d/x/1").unwrap();
    store.delete("d/x/1").unwrap();
    assert_eq!(store.get("d/x/1").unwrap(), None);
    store.delete_all("d/x/").unwrap();
    assert_eq!(store.list("d/").unwrap(), vec!["y"]);
}

fn locks_are_exclusive_until_dropped(store: &dyn Storage) {
    let held = store.try_lock("backup").unwrap().expect("a free lock is taken");
    assert!(store.try_lock("backup").unwrap().is_none(), "a held lock is refused");
    assert!(store.try_lock("other").unwrap().is_some(), "locks are per name");
    drop(held);
    assert!(
        store.try_lock("backup").unwrap().is_some(),
        "a dropped lock is free again"
    );
}

fn absent_object_is_none(store: &dyn Storage) {
    assert_eq!(store.get("wal/0000000100000000/absent").unwrap(), None);
    assert_eq!(store.head("wal/0000000100000000/absent").unwrap(), None);
}

fn put_then_get_round_trips(store: &dyn Storage) {
    assert_eq!(store.put_if_absent("a/b/c", b"hello").unwrap(), PutOutcome::Created);
    assert_eq!(store.get("a/b/c").unwrap().as_deref(), Some(&b"hello"[..]));
    assert_eq!(store.head("a/b/c").unwrap().map(|m| m.size), Some(5));
}

fn second_put_keeps_the_first_object(store: &dyn Storage) {
    store.put_if_absent("k/first", b"one").unwrap();
    assert_eq!(
        store.put_if_absent("k/first", b"two").unwrap(),
        PutOutcome::AlreadyExists
    );
    assert_eq!(store.get("k/first").unwrap().as_deref(), Some(&b"one"[..]));
}

fn deferred_puts_are_create_only_and_synced_together(store: &dyn Storage) {
    assert_eq!(
        store.put_if_absent_deferred("b/1/files/x", b"x").unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        store.put_if_absent_deferred("b/1/files/sub/y", b"y").unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        store.put_if_absent_deferred("b/1/files/x", b"other").unwrap(),
        PutOutcome::AlreadyExists
    );
    store.sync_all_under("b/1/").unwrap();
    store.sync_all_under("b/missing/").unwrap();
    assert_eq!(store.get("b/1/files/x").unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(store.get("b/1/files/sub/y").unwrap().as_deref(), Some(&b"y"[..]));
}

fn concurrent_puts_create_exactly_once(store: Arc<dyn Storage>) {
    let threads: Vec<_> = (0..8u8)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || store.put_if_absent("race/key", &vec![i; 100_000]).unwrap())
        })
        .collect();
    let outcomes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == PutOutcome::Created).count(), 1);
    let stored = store.get("race/key").unwrap().unwrap();
    assert_eq!(stored.len(), 100_000);
    assert!(
        stored.iter().all(|b| *b == stored[0]),
        "a put must never mix two writers' bytes"
    );
}

fn empty_and_large_objects_round_trip(store: &dyn Storage) {
    store.put_if_absent("sizes/empty", b"").unwrap();
    assert_eq!(store.get("sizes/empty").unwrap().as_deref(), Some(&b""[..]));
    let large: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
    store.put_if_absent("sizes/large", &large).unwrap();
    assert_eq!(store.get("sizes/large").unwrap().unwrap(), large);
}

#[test]
fn local_storage_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    check_backend(Arc::new(LocalStorage::open(dir.path()).unwrap()));
    let leftovers: Vec<_> = walk(dir.path()).into_iter().filter(|p| p.contains(".tmp.")).collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
}

/// The local backend with the trait's default `list_meta` (list, then head each object): the
/// default meets the contract too.
struct DefaultListing(LocalStorage);

impl Storage for DefaultListing {
    fn put_if_absent(&self, key: &str, data: &[u8]) -> crate::Result<PutOutcome> {
        self.0.put_if_absent(key, data)
    }
    fn put_if_absent_deferred(&self, key: &str, data: &[u8]) -> crate::Result<PutOutcome> {
        self.0.put_if_absent_deferred(key, data)
    }
    fn sync_all_under(&self, dir: &str) -> crate::Result<()> {
        self.0.sync_all_under(dir)
    }
    fn sync(&self, key: &str) -> crate::Result<()> {
        self.0.sync(key)
    }
    fn get(&self, key: &str) -> crate::Result<Option<Vec<u8>>> {
        self.0.get(key)
    }
    fn head(&self, key: &str) -> crate::Result<Option<super::ObjectMeta>> {
        self.0.head(key)
    }
    fn list(&self, dir: &str) -> crate::Result<Vec<String>> {
        self.0.list(dir)
    }
    fn delete(&self, key: &str) -> crate::Result<()> {
        self.0.delete(key)
    }
    fn try_lock(&self, name: &str) -> crate::Result<Option<super::LockGuard>> {
        self.0.try_lock(name)
    }
    fn available_bytes(&self) -> crate::Result<Option<u64>> {
        self.0.available_bytes()
    }
    fn describe(&self, key: &str) -> String {
        self.0.describe(key)
    }
}

#[test]
fn the_default_list_meta_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    check_backend(Arc::new(DefaultListing(LocalStorage::open(dir.path()).unwrap())));
}

/// The local backend's listing with metadata never follows a link planted among the objects,
/// and never fails for one: it is no plain object (`meta` is `None`), as `head` refuses it.
#[test]
fn local_list_meta_reports_links_without_following_them() {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("big"), vec![0u8; 4096]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStorage::open(dir.path()).unwrap();
    store.put_if_absent("w/a", b"abc").unwrap();
    symlink(outside.path().join("big"), dir.path().join("w/link")).unwrap();
    symlink(outside.path(), dir.path().join("w/linked-dir")).unwrap();
    let listed = store.list_meta("w/").unwrap();
    let summary: Vec<(&str, Option<u64>)> = listed
        .iter()
        .map(|l| (l.name.as_str(), l.meta.map(|m| m.size)))
        .collect();
    assert_eq!(summary, [("a", Some(3)), ("link", None), ("linked-dir", None)]);
    assert!(store.head("w/link").is_err());
}

#[test]
fn local_storage_refuses_a_missing_root() {
    let dir = tempfile::tempdir().unwrap();
    let err = LocalStorage::open(dir.path().join("not-mounted"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
    assert!(!dir.path().join("not-mounted").exists());
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path.display().to_string()]
            }
        })
        .collect()
}

/// Whoever owns the repository may plant links in it; the local backend refuses to follow any,
/// so that a root-run pitr is never steered outside the repository (issue: a planted
/// `locks/backup.lock` link handed a root-owned file to the repository's owner).
#[test]
fn local_storage_follows_no_link_planted_in_the_repository() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"root's file").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o640)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStorage::open(dir.path()).unwrap();
    std::fs::create_dir(dir.path().join("locks")).unwrap();
    symlink(&victim, dir.path().join("locks/backup.lock")).unwrap();
    assert!(
        store.try_lock("backup").is_err(),
        "a lock file that is a link is refused"
    );
    symlink(outside.path(), dir.path().join("wal")).unwrap();
    assert!(
        store.get("wal/victim").is_err(),
        "a directory link is an error, not an object"
    );
    assert!(store.put_if_absent("wal/new", b"x").is_err());
    assert!(!outside.path().join("new").exists(), "nothing written through the link");
    std::fs::create_dir(dir.path().join("objects")).unwrap();
    symlink(outside.path().join("gone"), dir.path().join("objects/dangling")).unwrap();
    assert!(
        store.get("objects/dangling").is_err(),
        "a dangling link is an error, never 'absent'"
    );
    assert!(store.head("objects/dangling").is_err());
    symlink(outside.path(), dir.path().join("objects/tree")).unwrap();
    store.delete_all("objects/").unwrap();
    assert!(victim.exists(), "deleting a tree removes links, not what they point to");
    for bad in ["../escape", "/etc/passwd", "a/../b", "a//b"] {
        assert!(store.put_if_absent(bad, b"x").is_err(), "{bad}");
        assert!(store.get(bad).is_err(), "{bad}");
    }
    let meta = std::fs::metadata(&victim).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o640,
        "the victim's mode is untouched"
    );
}

#[test]
fn local_storage_creates_private_directories_and_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStorage::open(dir.path()).unwrap();
    store.put_if_absent("wal/0000000100000000/x", b"x").unwrap();
    drop(store.try_lock("backup").unwrap());
    let mode = |rel: &str| std::fs::metadata(dir.path().join(rel)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("wal"), 0o700);
    assert_eq!(mode("wal/0000000100000000"), 0o700);
    assert_eq!(mode("wal/0000000100000000/x"), 0o600);
    assert_eq!(mode("locks"), 0o700);
    assert_eq!(mode("locks/backup.lock"), 0o600);
}
