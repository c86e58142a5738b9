//! The storage contract as tests: every backend hands [`check_backend`] a fresh, empty store in a
//! test of its own (the local backend in `storage/local.rs`, S3 in `tests/s3_storage.rs`).
//!
//! Public behind the `conformance` feature, so that integration tests (and backends outside this
//! crate) can run it; a failed check panics, as a test's assertion does.

use std::sync::Arc;

use super::{PutOutcome, Storage};

/// Weaknesses of the *server* a backend is tested against, which the suite then tolerates. Each
/// is a property of a test server, not of the backend: a store used for a repository must have
/// none, and a backend's own tests without such a server run [`check_backend`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerQuirks {
    /// The server checks a create-only put's condition (`If-None-Match: *`) before it writes,
    /// not atomically with the write, so concurrent creates of one key may all succeed and the
    /// last one wins (s3s-fs 0.14, the S3 test server). The concurrent check then asserts only
    /// what such a server still gives: every put succeeds, at least one creates the key, and the
    /// stored object is one writer's whole bytes. Sequential puts are still refused.
    pub non_atomic_conditional_puts: bool,
}

/// Runs every contract check against an empty store, panicking at the first one it fails.
pub fn check_backend(store: Arc<dyn Storage>) {
    check_backend_with_quirks(store, ServerQuirks::default());
}

/// [`check_backend`], tolerating the named weaknesses of a test server.
pub fn check_backend_with_quirks(store: Arc<dyn Storage>, quirks: ServerQuirks) {
    absent_object_is_none(&*store);
    put_then_get_round_trips(&*store);
    second_put_keeps_the_first_object(&*store);
    deferred_puts_are_create_only_and_synced_together(&*store);
    concurrent_puts_create_exactly_once(store.clone(), quirks);
    empty_and_large_objects_round_trip(&*store);
    readers_tell_what_get_tells(&*store);
    ranges_read_what_get_reads(&*store);
    written_objects_appear_whole_and_create_only(&*store);
    list_shows_children_sorted(&*store);
    list_meta_tells_what_head_tells(&*store);
    delete_removes_objects(&*store);
    locks_are_exclusive_until_dropped(&*store);
    available_bytes_is_plausible(&*store);
}

fn ranges_read_what_get_reads(store: &dyn Storage) {
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    store.put_if_absent("ranged/object", &bytes).unwrap();
    for (start, len) in [(0, 1), (1000, 70_000), (299_999, 1), (0, 300_000)] {
        let read = store.get_range("ranged/object", start, len).unwrap().unwrap();
        assert!(read == bytes[start as usize..][..len as usize], "{start}+{len}");
    }
    assert_eq!(store.get_range("ranged/absent", 0, 1).unwrap(), None);
    assert!(
        store.get_range("ranged/object", 299_000, 2000).is_err(),
        "a range past the end is an error"
    );
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
        // S3 tells the time in a listing to the millisecond and in a head to the second.
        let within_a_second = |a: super::ObjectMeta, b: super::ObjectMeta| {
            let apart = a
                .modified
                .duration_since(b.modified)
                .or_else(|_| b.modified.duration_since(a.modified));
            a.size == b.size && apart.unwrap() < std::time::Duration::from_secs(1)
        };
        match (entry.meta, expected) {
            (Some(listed), Some(headed)) => assert!(
                within_a_second(listed, headed),
                "{}: {listed:?} vs {headed:?}",
                entry.name
            ),
            (listed, headed) => assert_eq!(listed, headed, "{}", entry.name),
        }
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

fn concurrent_puts_create_exactly_once(store: Arc<dyn Storage>, quirks: ServerQuirks) {
    let threads: Vec<_> = (0..8u8)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || store.put_if_absent("race/key", &vec![i; 100_000]).unwrap())
        })
        .collect();
    let outcomes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let created = outcomes.iter().filter(|o| **o == PutOutcome::Created).count();
    if quirks.non_atomic_conditional_puts {
        assert!(created >= 1, "one of the concurrent puts creates the key");
    } else {
        assert_eq!(created, 1, "exactly one of the concurrent puts creates the key");
    }
    let stored = store.get("race/key").unwrap().unwrap();
    assert_eq!(stored.len(), 100_000);
    assert!(
        stored.iter().all(|b| *b == stored[0]),
        "a put must never mix two writers' bytes"
    );
}

/// [`Storage::put_writer`]: nothing is visible before `finish`, the head replaces the first
/// bytes, a second writer of the key leaves the first object, a dropped writer leaves nothing.
fn written_objects_appear_whole_and_create_only(store: &dyn Storage) {
    let mut writer = store.put_writer("written/a").unwrap();
    writer.write(b"????-first-").unwrap();
    writer.write_ahead().unwrap();
    writer.write(b"piece").unwrap();
    assert_eq!(writer.written(), 16);
    assert_eq!(store.get("written/a").unwrap(), None, "invisible before finish");
    assert!(
        store.list("written/").unwrap().is_empty(),
        "nothing listed before finish"
    );
    assert_eq!(writer.finish(b"HEAD").unwrap(), PutOutcome::Created);
    assert_eq!(
        store.get("written/a").unwrap().as_deref(),
        Some(&b"HEAD-first-piece"[..])
    );

    let mut second = store.put_writer("written/a").unwrap();
    second.write(b"other bytes").unwrap();
    assert_eq!(second.finish(b"").unwrap(), PutOutcome::AlreadyExists);
    assert_eq!(
        store.get("written/a").unwrap().as_deref(),
        Some(&b"HEAD-first-piece"[..])
    );

    let mut too_long = store.put_writer("written/b").unwrap();
    too_long.write(b"ab").unwrap();
    assert!(
        too_long.finish(b"abc").is_err(),
        "a head longer than the object is refused"
    );
    let mut dropped = store.put_writer("written/c").unwrap();
    dropped.write(b"never finished").unwrap();
    drop(dropped);
    assert_eq!(
        store.list("written/").unwrap(),
        vec!["a"],
        "a refused or dropped writer leaves nothing"
    );
}

fn empty_and_large_objects_round_trip(store: &dyn Storage) {
    store.put_if_absent("sizes/empty", b"").unwrap();
    assert_eq!(store.get("sizes/empty").unwrap().as_deref(), Some(&b""[..]));
    let large: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
    store.put_if_absent("sizes/large", &large).unwrap();
    assert_eq!(store.get("sizes/large").unwrap().unwrap(), large);
}

/// `get_reader` answers as `get` does: `None` for an absent object, and every byte of a present
/// one, the same whether read in small pieces or at once, and an end only at the object's end.
fn readers_tell_what_get_tells(store: &dyn Storage) {
    use std::io::Read;
    assert!(store.get_reader("readers/absent").unwrap().is_none());
    let large: Vec<u8> = (0..9_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    store.put_if_absent("readers/large", &large).unwrap();
    store.put_if_absent("readers/empty", b"").unwrap();
    let mut read = Vec::new();
    let mut reader = store
        .get_reader("readers/large")
        .unwrap()
        .expect("a stored object has a reader");
    let mut piece = [0u8; 4099];
    loop {
        match reader.read(&mut piece).unwrap() {
            0 => break,
            n => read.extend_from_slice(&piece[..n]),
        }
    }
    assert!(
        read == large,
        "read {} bytes of {}, or other bytes",
        read.len(),
        large.len()
    );
    let mut empty = Vec::new();
    let mut reader = store
        .get_reader("readers/empty")
        .unwrap()
        .expect("an empty object has a reader");
    reader.read_to_end(&mut empty).unwrap();
    assert!(empty.is_empty());
    // A reader dropped before its end leaves the store usable.
    let mut partly = store.get_reader("readers/large").unwrap().unwrap();
    partly.read_exact(&mut piece).unwrap();
    drop(partly);
    assert_eq!(store.get("readers/large").unwrap().map(|b| b.len()), Some(large.len()));
}
