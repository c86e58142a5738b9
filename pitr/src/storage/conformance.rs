//! The storage contract as tests. Every backend runs [`check_backend`]; a new backend adds one
//! test below that hands it a fresh, empty store.

use std::sync::Arc;

use super::{LocalStorage, PutOutcome, Storage};

/// Runs every contract check against an empty store.
fn check_backend(store: Arc<dyn Storage>) {
    absent_object_is_none(&*store);
    put_then_get_round_trips(&*store);
    second_put_keeps_the_first_object(&*store);
    concurrent_puts_create_exactly_once(store.clone());
    empty_and_large_objects_round_trip(&*store);
}

fn absent_object_is_none(store: &dyn Storage) {
    assert_eq!(store.get("wal/0000000100000000/absent").unwrap(), None);
    assert!(!store.exists("wal/0000000100000000/absent").unwrap());
}

fn put_then_get_round_trips(store: &dyn Storage) {
    assert_eq!(store.put_if_absent("a/b/c", b"hello").unwrap(), PutOutcome::Created);
    assert_eq!(store.get("a/b/c").unwrap().as_deref(), Some(&b"hello"[..]));
    assert!(store.exists("a/b/c").unwrap());
}

fn second_put_keeps_the_first_object(store: &dyn Storage) {
    store.put_if_absent("k/first", b"one").unwrap();
    assert_eq!(store.put_if_absent("k/first", b"two").unwrap(), PutOutcome::AlreadyExists);
    assert_eq!(store.get("k/first").unwrap().as_deref(), Some(&b"one"[..]));
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
    assert!(stored.iter().all(|b| *b == stored[0]), "a put must never mix two writers' bytes");
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

#[test]
fn local_storage_refuses_a_missing_root() {
    let dir = tempfile::tempdir().unwrap();
    let err = LocalStorage::open(dir.path().join("not-mounted")).unwrap_err().to_string();
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
