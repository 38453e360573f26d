//! Collection entries on every store backend: each behaviour is one test body, run against
//! memory, a redb file, a private `redis-server`, and a private three-master Redis Cluster;
//! then what only a shared store shows (corrupt records, coherence between enrichers, the cost
//! of a cold page mixing users and entries).

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use enrich::store::{self, ImportEntry, SharedStore, StoreOptions};
use enrich::{
    Depth, Enricher, EntryJson, EntryKey, ErrorKind, Key, NewEntry, NewUser, RawPage, Timestamp,
    UserId,
};
use serde_json::{Value, json};
use support::backends::{cluster, cluster_store, file, memory, redis, start_cluster};
use support::{RedisServer, temp_db};

store_suite!(
    add_then_get,
    add_of_a_taken_key_conflicts,
    update_keeps_created_at_and_owner,
    missing_entries_are_not_found,
    delete_removes_and_allows_re_adding,
    upsert_creates_and_replaces,
    import_takes_the_timestamps_it_is_given,
    delete_many_counts_those_that_existed,
    records_of_both_kinds_in_one_call,
    racing_adds_create_once,
    racing_updates_keep_created_at,
    largest_entry_round_trips,
    owned_writes_leave_an_entry_of_another_owner_or_none,
    owned_writes_of_an_absent_entry_are_not_found,
    owned_writes_of_ones_own_entry_keep_owner_and_created_at,
    owned_writes_miss_an_entry_created_again_by_another_user,
);

fn key(collection: &str, id: &str) -> EntryKey {
    EntryKey::new(collection, id).unwrap()
}

fn entry(collection: &str, id: &str, data: Value) -> NewEntry {
    NewEntry::new(key(collection, id), Some(data)).unwrap()
}

fn owner(id: &str) -> Option<UserId> {
    Some(UserId::parse(id).unwrap())
}

fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

/// Alice's update and delete of the entry `k`, made only if she owns it: both refused as not
/// hers, and the entry stored as it was.
async fn alice_is_refused(store: &SharedStore, k: &EntryKey) {
    let before = store.get_stored_entry(k).await.unwrap().unwrap();
    let update = entry(k.collection(), k.id(), json!({"by": "alice"}));
    let err = (store.update_owned_entry(&update, &user("alice")).await).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotOwner, "{err}");
    assert!(err.is_not_owner());
    assert!(err.to_string().contains(k.as_str()), "{err}");
    let err = (store.delete_owned_entry(k, &user("alice")).await).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotOwner, "{err}");
    assert_eq!(store.get_stored_entry(k).await.unwrap().unwrap(), before);
}

/// An update or a delete made only for its owner leaves another user's entry, and one of no
/// user (written by a server), as they were.
async fn owned_writes_leave_an_entry_of_another_owner_or_none(store: SharedStore) {
    let bobs = key("food", "bobs");
    (store.add_entry(&entry("food", "bobs", json!({"by": "bob"})).owned_by(owner("bob"))))
        .await
        .unwrap();
    alice_is_refused(&store, &bobs).await;
    let nobodys = key("food", "nobodys");
    (store.add_entry(&entry("food", "nobodys", json!({"by": "server"}))))
        .await
        .unwrap();
    alice_is_refused(&store, &nobodys).await;
    // An owner that is a prefix of another's is not that owner.
    (store.add_entry(&entry("food", "alices", json!({"a": 1})).owned_by(owner("alice2"))))
        .await
        .unwrap();
    alice_is_refused(&store, &key("food", "alices")).await;
}

async fn owned_writes_of_an_absent_entry_are_not_found(store: SharedStore) {
    let k = key("food", "nothing");
    let err = (store
        .update_owned_entry(&entry("food", "nothing", json!({"a": 1})), &user("alice")))
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = (store.delete_owned_entry(&k, &user("alice")).await).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // Nothing was created.
    assert_eq!(store.get_stored_entry(&k).await.unwrap(), None);
}

async fn owned_writes_of_ones_own_entry_keep_owner_and_created_at(store: SharedStore) {
    let k = key("food", "mine");
    let added = (store.add_entry(&entry("food", "mine", json!({"a": 1})).owned_by(owner("alice"))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let updated = (store
        .update_owned_entry(&entry("food", "mine", json!({"b": 2})), &user("alice")))
    .await
    .unwrap();
    assert_eq!(updated.created_at(), added.created_at());
    let value = updated.to_value();
    assert_eq!(value["data"], json!({"b": 2}));
    assert!(value["updated_at"].as_str().unwrap() > value["created_at"].as_str().unwrap());
    let stored = store.get_stored_entry(&k).await.unwrap().unwrap();
    assert_eq!(stored.entry, updated);
    assert_eq!(stored.owner, owner("alice"));
    assert_eq!(store.get_entry(&k).await.unwrap(), updated);
    // An owner named by the update itself is not a change of owner.
    (store.update_owned_entry(
        &entry("food", "mine", json!({"c": 3})).owned_by(owner("bob")),
        &user("alice"),
    ))
    .await
    .unwrap();
    let stored = store.get_stored_entry(&k).await.unwrap().unwrap();
    assert_eq!(stored.owner, owner("alice"));
    store.delete_owned_entry(&k, &user("alice")).await.unwrap();
    assert_eq!(store.get_stored_entry(&k).await.unwrap(), None);
    let err = (store.delete_owned_entry(&k, &user("alice")).await).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

/// The race of a check read before the write, made deterministic: alice's entry is what a
/// read of its owner finds; then it is deleted and bob adds the key again; alice's write,
/// made only if she owns the entry, lands after that, and must not change bob's entry.
async fn owned_writes_miss_an_entry_created_again_by_another_user(store: SharedStore) {
    let k = key("race", "x");
    (store.add_entry(&entry("race", "x", json!({"by": "alice"})).owned_by(owner("alice"))))
        .await
        .unwrap();
    let read = store.get_stored_entry(&k).await.unwrap().unwrap();
    assert_eq!(read.owner, owner("alice"));
    store.delete_entry(&k).await.unwrap();
    let bobs = (store.add_entry(&entry("race", "x", json!({"by": "bob"})).owned_by(owner("bob"))))
        .await
        .unwrap();
    alice_is_refused(&store, &k).await;
    let stored = store.get_stored_entry(&k).await.unwrap().unwrap();
    assert_eq!((stored.entry, stored.owner), (bobs, owner("bob")));
}

async fn add_then_get(store: SharedStore) {
    let new = entry("food", "burger", json!({"name": "Burger", "z": [1, "é"]}));
    let added = store.add_entry(&new).await.unwrap();
    let created = added.created_at().to_string();
    assert_eq!(
        added.as_str(),
        format!(
            r#"{{"id":"burger","collection":"food","foreign_id":"food:burger","data":{{"name":"Burger","z":[1,"é"]}},"created_at":"{created}","updated_at":"{created}"}}"#
        )
    );
    assert_eq!(
        store.get_entry(&key("food", "burger")).await.unwrap(),
        added
    );
    let stored = store
        .get_stored_entry(&key("food", "burger"))
        .await
        .unwrap();
    assert_eq!(stored.unwrap().entry, added);
}

async fn add_of_a_taken_key_conflicts(store: SharedStore) {
    let first = store
        .add_entry(&entry("food", "x", json!({"v": 1})))
        .await
        .unwrap();
    let err = store
        .add_entry(&entry("food", "x", json!({"v": 2})))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("food:x"), "{err}");
    assert_eq!(store.get_entry(&key("food", "x")).await.unwrap(), first);
    // The same id in another collection is another entry.
    store
        .add_entry(&entry("drinks", "x", json!({"v": 3})))
        .await
        .unwrap();
}

async fn update_keeps_created_at_and_owner(store: SharedStore) {
    let new = entry("food", "u", json!({"a": 1})).owned_by(owner("alice"));
    let added = store.add_entry(&new).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    // An update names no owner; the stored one stays.
    let updated = store
        .update_entry(&entry("food", "u", json!({"b": 2})))
        .await
        .unwrap();
    assert_eq!(updated.created_at(), added.created_at());
    assert!(updated.as_str() > added.as_str() || updated != added);
    let value = updated.to_value();
    assert_eq!(value["data"], json!({"b": 2}));
    assert!(value["updated_at"].as_str().unwrap() > value["created_at"].as_str().unwrap());
    let stored = store
        .get_stored_entry(&key("food", "u"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.entry, updated);
    assert_eq!(stored.owner, owner("alice"));
    assert_eq!(store.get_entry(&key("food", "u")).await.unwrap(), updated);
}

async fn missing_entries_are_not_found(store: SharedStore) {
    let k = key("food", "nothing");
    let err = store
        .update_entry(&entry("food", "nothing", json!({"a": 1})))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("food:nothing"), "{err}");
    assert_eq!(
        store.delete_entry(&k).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(store.get_entry(&k).await.unwrap_err().is_not_found());
    assert_eq!(store.get_stored_entry(&k).await.unwrap(), None);
    // Nothing was created by the failed update.
    assert_eq!(
        store.get_entries_each(&[k]).await[0].as_ref().unwrap(),
        &None
    );
}

async fn delete_removes_and_allows_re_adding(store: SharedStore) {
    let k = key("food", "gone");
    let first = store
        .add_entry(&entry("food", "gone", json!({"a": 1})).owned_by(owner("bob")))
        .await
        .unwrap();
    store.delete_entry(&k).await.unwrap();
    assert!(store.get_entry(&k).await.unwrap_err().is_not_found());
    tokio::time::sleep(Duration::from_millis(2)).await;
    let again = store
        .add_entry(&entry("food", "gone", json!({"a": 2})))
        .await
        .unwrap();
    assert!(again.created_at() > first.created_at());
    let stored = store.get_stored_entry(&k).await.unwrap().unwrap();
    assert_eq!(stored.owner, None);
}

async fn upsert_creates_and_replaces(store: SharedStore) {
    let old = store
        .add_entry(&entry("food", "a", json!({"v": 0})).owned_by(owner("carol")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let batch = [
        entry("food", "a", json!({"v": 1})).owned_by(owner("mallory")),
        entry("food", "b", json!({"v": 1})).owned_by(owner("dave")),
        entry("drinks", "a", json!({"v": 1})),
    ];
    let written = store.upsert_entries(&batch).await.unwrap();
    assert_eq!(written.len(), 3);
    // Replaced: created_at and owner kept.
    assert_eq!(written[0].created_at(), old.created_at());
    assert_eq!(written[0].to_value()["data"]["v"], 1);
    let a = store
        .get_stored_entry(&key("food", "a"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.entry, a.owner), (written[0].clone(), owner("carol")));
    // Created: stamped now, with the owner given.
    let b = store
        .get_stored_entry(&key("food", "b"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((b.entry, b.owner), (written[1].clone(), owner("dave")));
    assert_eq!(
        store.get_entry(&key("drinks", "a")).await.unwrap(),
        written[2]
    );
    assert!(store.upsert_entries(&[]).await.unwrap().is_empty());
}

/// An import with timestamps: a given one stands for both, neither means the time of the
/// write, and a replaced entry keeps its `created_at` (and always its owner) unless the import
/// gives one.
async fn import_takes_the_timestamps_it_is_given(store: SharedStore) {
    let t1 = Timestamp::parse("2020-01-01T00:00:00Z").unwrap();
    let t2 = Timestamp::parse("2021-02-03T04:05:06.123456Z").unwrap();
    let import = |id: &str, c, u| ImportEntry::new(entry("food", id, json!({"id": id})), c, u);
    let stamps = |e: &EntryJson| {
        let updated = e.to_value()["updated_at"].as_str().unwrap().to_string();
        (e.created_at().to_string(), updated)
    };
    let at = |t: Timestamp| t.as_str().to_string();
    let before = Timestamp::now();
    let batch = [
        import("both", Some(t1), Some(t2)).unwrap(),
        import("created", Some(t1), None).unwrap(),
        import("updated", None, Some(t2)).unwrap(),
        import("neither", None, None).unwrap(),
    ];
    let written = store.import_entries(&batch).await.unwrap();
    assert_eq!(written.len(), 4);
    assert_eq!(stamps(&written[0]), (at(t1), at(t2)));
    assert_eq!(stamps(&written[1]), (at(t1), at(t1)));
    assert_eq!(stamps(&written[2]), (at(t2), at(t2)));
    let (created, updated) = stamps(&written[3]);
    assert_eq!(created, updated);
    assert!(created.as_str() >= before.as_str(), "{created}");
    for (import, written) in batch.iter().zip(&written) {
        let stored = store.get_entry(import.entry().key()).await.unwrap();
        assert_eq!(&stored, written);
    }

    // Replacing: created_at kept unless given, owner kept always.
    store
        .add_entry(&entry("food", "owned", json!({"v": 0})).owned_by(owner("carol")))
        .await
        .unwrap();
    let before = Timestamp::now();
    let again = [
        import("both", None, None).unwrap(),
        import("created", None, Some(t2)).unwrap(),
        import("updated", Some(t1), None).unwrap(),
        import("owned", Some(t1), Some(t2)).unwrap(),
    ];
    let written = store.import_entries(&again).await.unwrap();
    let (created, updated) = stamps(&written[0]);
    assert_eq!(created, at(t1));
    assert!(updated.as_str() >= before.as_str(), "{updated}");
    assert_eq!(stamps(&written[1]), (at(t1), at(t2)));
    assert_eq!(stamps(&written[2]), (at(t1), at(t1)));
    assert_eq!(stamps(&written[3]), (at(t1), at(t2)));
    let owned = store
        .get_stored_entry(&key("food", "owned"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (owned.entry, owned.owner),
        (written[3].clone(), owner("carol"))
    );
    for (import, written) in again.iter().zip(&written) {
        let stored = store.get_entry(import.entry().key()).await.unwrap();
        assert_eq!(&stored, written);
    }
    assert!(store.import_entries(&[]).await.unwrap().is_empty());
}

async fn delete_many_counts_those_that_existed(store: SharedStore) {
    let keys: Vec<EntryKey> = (0..20).map(|i| key("many", &format!("e{i}"))).collect();
    let batch: Vec<NewEntry> = (0..10)
        .map(|i| entry("many", &format!("e{i}"), json!({ "i": i })))
        .collect();
    store.upsert_entries(&batch).await.unwrap();
    assert_eq!(store.delete_entries(&keys).await.unwrap(), 10);
    let found = store.get_entries_each(&keys).await;
    assert!(found.iter().all(|f| matches!(f, Ok(None))), "{found:?}");
    assert_eq!(store.delete_entries(&keys).await.unwrap(), 0);
    assert_eq!(store.delete_entries(&[]).await.unwrap(), 0);
}

async fn records_of_both_kinds_in_one_call(store: SharedStore) {
    let alice = store
        .add(
            &NewUser::new("alice", Some(json!({"n": 1}))).unwrap(),
            false,
        )
        .await
        .unwrap()
        .user;
    let burger = store
        .add_entry(&entry("food", "burger", json!({"n": 2})))
        .await
        .unwrap();
    // A user id and an entry id alike ("alice") never meet: the keys differ by kind.
    let keys = [
        Key::parse("food:burger").unwrap(),
        Key::parse("alice").unwrap(),
        Key::parse("food:alice").unwrap(),
        Key::parse("nobody").unwrap(),
        Key::parse("food:burger").unwrap(),
    ];
    let found: Vec<_> = (store.get_records_each(&keys).await.into_iter())
        .map(|f| f.unwrap())
        .collect();
    assert_eq!(found[0].as_ref().unwrap().entry(), Some(&burger));
    assert_eq!(found[1].as_ref().unwrap().user(), Some(&alice));
    assert_eq!(found[2], None);
    assert_eq!(found[3], None);
    assert_eq!(found[4], found[0]);
    assert!(store.get_records_each(&[]).await.is_empty());
}

async fn racing_adds_create_once(store: SharedStore) {
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .add_entry(&entry("race", "x", json!({ "i": i })))
                    .await
            })
        })
        .collect();
    let mut created = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(entry) => created.push(entry),
            Err(err) => assert_eq!(err.kind(), ErrorKind::Conflict, "{err}"),
        }
    }
    assert_eq!(created.len(), 1);
    assert_eq!(
        store.get_entry(&key("race", "x")).await.unwrap(),
        created[0]
    );
}

async fn racing_updates_keep_created_at(store: SharedStore) {
    let added = store
        .add_entry(&entry("race", "u", json!({"i": -1})).owned_by(owner("erin")))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let new = entry("race", "u", json!({ "i": i }));
                if i % 2 == 0 {
                    store.update_entry(&new).await
                } else {
                    store.upsert_entries(&[new]).await.map(|mut w| w.remove(0))
                }
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.unwrap().unwrap().created_at(),
            added.created_at()
        );
    }
    let stored = store
        .get_stored_entry(&key("race", "u"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.entry.created_at(), added.created_at());
    assert_eq!(stored.owner, owner("erin"));
}

async fn largest_entry_round_trips(store: SharedStore) {
    // {"id":"big","data":{"k":"…"}} is 28 bytes around the value: exactly at the limit.
    let value = "é".repeat(5) + &"v".repeat(enrich::collection::MAX_ENTRY_BYTES - 28 - 10);
    let big = entry("food", "big", json!({ "k": value }));
    let added = store.add_entry(&big).await.unwrap();
    assert_eq!(store.get_entry(&key("food", "big")).await.unwrap(), added);
    let written = store.upsert_entries(&[big]).await.unwrap();
    assert_eq!(written[0].created_at(), added.created_at());
}

/// The same writes on every backend give the same bytes, the timestamps aside: the 87-byte
/// tail is the only part a backend stamps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_backend_stores_the_same_bytes() {
    let backends = [memory().await, file().await, redis().await, cluster().await];
    let writes = |store: SharedStore| async move {
        let mut answers: Vec<EntryJson> = Vec::new();
        let data = json!({"name": "Bürger \"deluxe\"\n", "n": 1.5e3, "nested": {"b": [true, null]}, "a": "SU:alice"});
        answers.push(
            store
                .add_entry(&entry("food", "a", data.clone()))
                .await
                .unwrap(),
        );
        answers.push(
            store
                .update_entry(&entry("food", "a", json!({"x": "\u{1F600}"})))
                .await
                .unwrap(),
        );
        answers.extend(
            store
                .upsert_entries(&[
                    entry("food", "a", data.clone()),
                    entry("food", "b", json!({"k": [1, 2, 3]})).owned_by(owner("o")),
                ])
                .await
                .unwrap(),
        );
        for k in ["food:a", "food:b"] {
            answers.push(store.get_entry(&EntryKey::parse(k).unwrap()).await.unwrap());
        }
        answers
    };
    let mut seen: Vec<Vec<String>> = Vec::new();
    for backend in &backends {
        let answers = writes(backend.store.clone()).await;
        let heads = answers
            .iter()
            .map(|answer| {
                let text = answer.as_str();
                let (head, tail) = text.split_at(text.len() - 87);
                assert!(tail.starts_with(r#","created_at":""#), "{text}");
                assert!(tail.ends_with(r#""}"#), "{text}");
                head.to_string()
            })
            .collect();
        seen.push(heads);
    }
    for (i, other) in seen.iter().enumerate().skip(1) {
        assert_eq!(other, &seen[0], "backend {i} differs from memory");
    }
    assert_eq!(
        seen[0][0],
        r#"{"id":"a","collection":"food","foreign_id":"food:a","data":{"name":"Bürger \"deluxe\"\n","n":1500.0,"nested":{"b":[true,null]},"a":"SU:alice"}"#
    );
}

/// A stored entry that is not our shape is an error naming it, on reads and writes alike,
/// never a missing entry; and a write never builds on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_entry_in_redis_is_an_error_never_missing() {
    let server = RedisServer::start();
    let store = store::open(&server.url(), &StoreOptions::new())
        .await
        .unwrap();
    let good = store
        .add_entry(&entry("food", "good", json!({"a": 1})))
        .await
        .unwrap();
    let mut conn = server.connection();
    let corrupt = [
        good.as_str().replace(r#""a":1"#, r#""a":"#),
        good.as_str().to_string(), // another entry's record
        format!("bad owner\n{good}"),
        good.as_str()[..good.as_str().len() - 2].to_string(),
        good.as_str().replacen("-", "x", 1),
    ];
    for (i, bytes) in corrupt.iter().enumerate() {
        let id = format!("bad{i}");
        let name = format!("enrich:object:food:{id}");
        redis::cmd("SET")
            .arg(&name)
            .arg(bytes)
            .exec(&mut conn)
            .unwrap();
        let k = key("food", &id);
        let names_it = |err: &enrich::Error| {
            assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
            assert!(
                err.to_string().contains(&format!("entry food:{id}")),
                "{err}"
            );
            assert!(err.to_string().contains("corrupt"), "{err}");
        };
        names_it(&store.get_entry(&k).await.unwrap_err());
        names_it(&store.get_stored_entry(&k).await.unwrap_err());
        let found = store
            .get_records_each(&[Key::Entry(k.clone()), Key::parse("food:good").unwrap()])
            .await;
        names_it(found[0].as_ref().unwrap_err());
        assert_eq!(
            found[1].as_ref().unwrap().as_ref().unwrap().entry(),
            Some(&good)
        );
        if i != 1 {
            // A record of another entry would be replaced whole by an update, which takes
            // nothing from it but owner and created_at: those are ours, so it may stand.
            for err in [
                store
                    .update_entry(&entry("food", &id, json!({"b": 2})))
                    .await
                    .unwrap_err(),
                store
                    .upsert_entries(&[entry("food", &id, json!({"b": 2}))])
                    .await
                    .unwrap_err(),
                // Checked before the owner is: a record not to build on is corrupt, whoever
                // asks.
                store
                    .update_owned_entry(&entry("food", &id, json!({"b": 2})), &user("alice"))
                    .await
                    .unwrap_err(),
            ] {
                names_it(&err);
            }
            let left: Vec<u8> = redis::cmd("GET").arg(&name).query(&mut conn).unwrap();
            assert_eq!(left, bytes.as_bytes(), "the record was left as it was");
        }
    }
}

/// A batch that meets a corrupt stored entry is refused whole on one Redis, as the file
/// store's transaction and the users' import are: nothing of it is written, whether it is an
/// upsert or an import, and the store says which entry stopped it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_entry_in_redis_refuses_its_batch_whole() {
    let server = RedisServer::start();
    let store = store::open(&server.url(), &StoreOptions::new())
        .await
        .unwrap();
    let mut conn = server.connection();
    redis::cmd("SET")
        .arg("enrich:object:food:bad")
        .arg("garbage")
        .exec(&mut conn)
        .unwrap();
    refuses_its_batch_whole(&store, 0).await;
    let left: String = redis::cmd("GET")
        .arg("enrich:object:food:bad")
        .query(&mut conn)
        .unwrap();
    assert_eq!(left, "garbage");
}

/// Writes `good3`, `bad` (corrupt in the store) and `good4` in one batch, three ways: each
/// is refused naming `bad`, at position 1, with `written` of the batch written all the same.
async fn refuses_its_batch_whole(store: &SharedStore, written: u64) {
    let batch: Vec<NewEntry> = ["good3", "bad", "good4"]
        .iter()
        .map(|id| entry("food", id, json!({"v": 1})))
        .collect();
    let imports: Vec<ImportEntry> = batch.iter().cloned().map(ImportEntry::from).collect();
    let names_bad = |err: &enrich::Error| {
        assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
        assert!(err.to_string().contains("entry food:bad"), "{err}");
        assert!(err.to_string().contains("corrupt"), "{err}");
    };
    names_bad(&store.upsert_entries(&batch).await.unwrap_err());
    let stopped = store.import_entries(&imports).await.unwrap_err();
    names_bad(&stopped.error);
    assert_eq!((stopped.at, stopped.written), (Some(1), written));
    if written == 0 {
        assert!(
            stopped
                .error
                .to_string()
                .contains("nothing of this batch was written"),
            "{}",
            stopped.error
        );
        for id in ["good3", "good4"] {
            let err = store.get_entry(&key("food", id)).await.unwrap_err();
            assert!(err.is_not_found(), "{id}: {err}");
        }
    }
}

/// The same on the file store, whose records are written here with redb directly.
#[tokio::test]
async fn a_corrupt_entry_in_the_file_store_is_an_error_never_missing() {
    let (_dir, path) = temp_db();
    let url = format!("file:{}", path.display());
    let store = store::open(&url, &StoreOptions::new()).await.unwrap();
    let good = store
        .add_entry(&entry("food", "good", json!({"a": 1})))
        .await
        .unwrap();
    drop(store);
    {
        let mut builder = redb::Database::builder();
        builder.set_concurrency_mode(redb::ConcurrencyMode::MultiWriter);
        let db = builder.open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, &[u8]> =
                redb::TableDefinition::new("entries:enrich");
            let mut table = txn.open_table(def).unwrap();
            let bytes = good.as_str().replace(r#""a":1"#, r#""a":"#);
            table.insert("food:bad", bytes.as_bytes()).unwrap();
            table.insert("food:other", good.as_bytes()).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = store::open(&url, &StoreOptions::new()).await.unwrap();
    for id in ["bad", "other"] {
        let k = key("food", id);
        let err = store.get_entry(&k).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
        assert!(
            err.to_string().contains(&format!("entry food:{id}")),
            "{err}"
        );
        let found = store
            .get_records_each(&[Key::Entry(k.clone()), Key::parse("food:good").unwrap()])
            .await;
        assert!(found[0].is_err(), "{found:?}");
        assert_eq!(
            found[1].as_ref().unwrap().as_ref().unwrap().entry(),
            Some(&good)
        );
        let err = store
            .update_entry(&entry("food", id, json!({"b": 2})))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    }
    // Its batches are one transaction: refused whole, naming the entry that stopped it.
    let stopped = store
        .import_entries(&[
            entry("food", "good3", json!({"v": 1})).into(),
            entry("food", "bad", json!({"v": 1})).into(),
            entry("food", "good4", json!({"v": 1})).into(),
        ])
        .await
        .unwrap_err();
    assert!(
        stopped.error.to_string().contains("entry food:bad"),
        "{}",
        stopped.error
    );
    assert_eq!((stopped.at, stopped.written), (Some(1), 0));
    for id in ["good3", "good4"] {
        assert!(
            store
                .get_entry(&key("food", id))
                .await
                .unwrap_err()
                .is_not_found()
        );
    }
}

/// A store that cannot be reached fails entry reads with a store fault, never `None`.
#[tokio::test]
async fn redis_down_is_a_fault_for_entries() {
    let mut server = RedisServer::start();
    let store = store::open(&server.url(), &StoreOptions::new())
        .await
        .unwrap();
    store
        .add_entry(&entry("food", "x", json!({"a": 1})))
        .await
        .unwrap();
    server.stop();
    let k = key("food", "x");
    assert!(store.get_entry(&k).await.unwrap_err().is_store_fault());
    let found = store.get_records_each(&[Key::Entry(k.clone())]).await;
    assert!(found[0].as_ref().unwrap_err().is_store_fault(), "{found:?}");
    let err = store
        .add_entry(&entry("food", "y", json!({"a": 1})))
        .await
        .unwrap_err();
    assert!(err.is_store_fault(), "{err}");
}

/// What `enricher` puts in place of `SO:<foreign_id>` as an activity's object.
async fn object(enricher: &Enricher, foreign_id: &str) -> Value {
    let mut docs = vec![json!({ "object": format!("SO:{foreign_id}") })];
    enricher
        .enrich_values(&mut docs, Depth::TopLevel)
        .await
        .unwrap();
    docs.remove(0)["object"].take()
}

async fn until_object(enricher: &Enricher, foreign_id: &str, done: impl Fn(&Value) -> bool) {
    let started = Instant::now();
    loop {
        let seen = object(enricher, foreign_id).await;
        if done(&seen) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{foreign_id} still {seen}"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Entry writes through one enricher, or outside the engine, reach another enricher's L1 as
/// user writes do: through the server's tracking of both prefixes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_writes_reach_other_enrichers() {
    let server = RedisServer::start();
    let a = support::watched_enricher(&server.url(), Duration::from_secs(5)).await;
    let b = support::watched_enricher(&server.url(), Duration::from_secs(5)).await;
    let v = |e: &Value| e["data"]["v"].as_i64().unwrap_or(-1);
    // A miss is cached, and replaced by the creation.
    assert_eq!(object(&b, "food:x").await["error"], "ReferenceNotFound");
    a.users()
        .add_entry(&entry("food", "x", json!({"v": 0})))
        .await
        .unwrap();
    until_object(&b, "food:x", |e| v(e) == 0).await;
    for i in 1..=200 {
        a.users()
            .update_entry(&entry("food", "x", json!({ "v": i })))
            .await
            .unwrap();
        until_object(&b, "food:x", |e| v(e) == i).await;
    }
    a.users()
        .upsert_entries(&[entry("food", "x", json!({"v": 1000}))])
        .await
        .unwrap();
    until_object(&b, "food:x", |e| v(e) == 1000).await;
    a.users().delete_entry(&key("food", "x")).await.unwrap();
    until_object(&b, "food:x", |e| e["error"] == "ReferenceNotFound").await;
    // Written outside the engine.
    let stored = entry("food", "y", json!({"v": 7}))
        .to_json(enrich::Timestamp::now(), enrich::Timestamp::now());
    assert_eq!(object(&b, "food:y").await["error"], "ReferenceNotFound");
    redis::cmd("SET")
        .arg("enrich:object:food:y")
        .arg(stored.as_str())
        .exec(&mut server.connection())
        .unwrap();
    until_object(&b, "food:y", |e| v(e) == 7).await;
    a.users().delete_entries(&[key("food", "y")]).await.unwrap();
    until_object(&b, "food:y", |e| e["error"] == "ReferenceNotFound").await;
}

/// A page of activities mixing users and entries, present and missing.
fn mixed_page(n: usize) -> RawPage {
    let mut page = RawPage::new(Depth::TopLevel);
    for i in 0..n {
        let doc = json!({
            "actor": format!("SU:u{i}"),
            "object": format!("SO:food:e{i}"),
            "target": format!("SO:food:missing{i}"),
            "origin": "SU:ghost",
        });
        page.push(doc.to_string().as_bytes()).unwrap();
    }
    page
}

async fn fill(store: &SharedStore, n: usize) -> (Vec<String>, Vec<String>) {
    let mut users = Vec::new();
    for i in 0..n {
        let user = NewUser::new(&format!("u{i}"), Some(json!({ "i": i }))).unwrap();
        users.push(
            store
                .add(&user, false)
                .await
                .unwrap()
                .user
                .as_str()
                .to_string(),
        );
    }
    let batch: Vec<NewEntry> = (0..n)
        .map(|i| entry("food", &format!("e{i}"), json!({ "i": i })))
        .collect();
    let entries = (store.upsert_entries(&batch).await.unwrap().into_iter())
        .map(|e| e.as_str().to_string())
        .collect();
    (users, entries)
}

/// A cold page of users and entries is one store call, one `MGET` on Redis, and embeds the
/// stored bytes as they are.
#[tokio::test]
async fn redis_mixed_page_is_one_mget() {
    let server = RedisServer::start();
    let store = store::open(&server.url(), &StoreOptions::new())
        .await
        .unwrap();
    let (users, entries) = fill(&store, 10).await;
    let enricher = Enricher::new(store);
    // The tracking connection's own commands come before the count starts.
    assert!(enricher.wait_for_cache(Duration::from_secs(5)).await);
    server.reset_stats();
    let page = mixed_page(10);
    let enriched = enricher.enrich_page(&page).await.unwrap();
    assert_eq!(enriched.stats().store_calls, 1);
    let mut out = Vec::new();
    enriched.write(3, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(&users[3]), "{text}");
    assert!(text.contains(&entries[3]), "{text}");
    assert!(text.contains(r#"{"collection":"food","id":"missing3","error":"ReferenceNotFound","reference":"SO:food:missing3","reference_type":"object"}"#), "{text}");
    // One MGET of users and entries, then a GET of each key it found missing (the page's
    // missing entries), which tells a key that does not exist from one of another type.
    let (stats, calls) = server.commands_run();
    assert_eq!(calls.len(), 2, "{stats}");
    let ran = |call: &str| calls.iter().any(|c| c.starts_with(call));
    assert!(ran("cmdstat_get:calls="), "{stats}");
    assert!(ran("cmdstat_mget:calls=1,"), "{stats}");
}

/// On a cluster, the same page is one store call and at most one command per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_mixed_page_is_one_command_per_node() {
    let (cluster, store) = cluster_store().await;
    let (users, entries) = fill(&store, 30).await;
    let enricher = Enricher::new(store);
    cluster.reset_stats();
    let page = mixed_page(30);
    let enriched = enricher.enrich_page(&page).await.unwrap();
    assert_eq!(enriched.stats().store_calls, 1);
    let mut out = Vec::new();
    enriched.write(7, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains(&users[7]) && text.contains(&entries[7]),
        "{text}"
    );
    let mut nodes_read = 0;
    for node in 0..cluster.ports().len() {
        let evals = cluster.stat(node, "cmdstat_eval_ro:calls=");
        assert!(evals <= 1, "node {node}: {evals} reads");
        assert_eq!(cluster.stat(node, "cmdstat_mget:calls="), 0, "node {node}");
        nodes_read += evals;
    }
    // 30 users, 60 entries and a ghost spread over every master.
    assert_eq!(nodes_read, cluster.ports().len() as u64);
}

/// A batch of writes on a cluster is one pipeline per node: the script is loaded once per
/// node, and every entry is one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_batch_writes_are_one_pipeline_per_node() {
    let (cluster, store) = cluster_store().await;
    cluster.reset_stats();
    let batch: Vec<NewEntry> = (0..100)
        .map(|i| entry("bulk", &format!("e{i}"), json!({ "i": i })))
        .collect();
    let written = store.upsert_entries(&batch).await.unwrap();
    assert_eq!(written.len(), 100);
    let nodes = cluster.ports().len();
    let (mut loads, mut calls) = (0, 0);
    for node in 0..nodes {
        loads += cluster.stat(node, "cmdstat_script|load:calls=");
        calls += cluster.stat(node, "cmdstat_evalsha:calls=");
    }
    // One call per slot: the keys of a slot are written whole, or not at all.
    let slots: HashSet<u16> = (0..100)
        .map(|i| cluster.slot_of(&format!("enrich:object:bulk:e{i}")))
        .collect();
    assert_eq!((loads, calls), (nodes as u64, slots.len() as u64));
    let keys: Vec<EntryKey> = (0..100).map(|i| key("bulk", &format!("e{i}"))).collect();
    let ids: HashSet<String> = (store.get_entries_each(&keys).await.into_iter())
        .map(|e| {
            e.unwrap().unwrap().to_value()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 100);
    assert_eq!(store.delete_entries(&keys).await.unwrap(), 100);
}

/// A batch written after a slot moved, with the store's map still naming the old owner: the
/// node refuses the keys it lost (MOVED), they are sent again through the cluster's redirects,
/// and every entry is written once, keeping its created_at.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_batch_writes_follow_a_moved_slot() {
    let (cluster, store) = cluster_store().await;
    let batch: Vec<NewEntry> = (0..20)
        .map(|i| entry("moved", &format!("e{i}"), json!({ "v": 0 })))
        .collect();
    let before = store.upsert_entries(&batch).await.unwrap();
    let slot = cluster.slot_of("enrich:object:moved:e0");
    let from = cluster.owner_of(slot);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.migrate_slot(slot, from, (from + 1) % 3, Duration::ZERO);
        cluster
    })
    .await
    .unwrap();
    assert_eq!(cluster.owner_of(slot), (from + 1) % 3);
    let batch: Vec<NewEntry> = (0..20)
        .map(|i| entry("moved", &format!("e{i}"), json!({ "v": 1 })))
        .collect();
    let after = store.upsert_entries(&batch).await.unwrap();
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(new.created_at(), old.created_at());
        assert_eq!(new.to_value()["data"]["v"], 1);
    }
    let got = store.get_entry(&key("moved", "e0")).await.unwrap();
    assert_eq!(got, after[0]);
    let on_new: Option<String> = redis::cmd("GET")
        .arg("enrich:object:moved:e0")
        .query(&mut cluster.node_connection((from + 1) % 3))
        .unwrap();
    assert_eq!(on_new.as_deref(), Some(after[0].as_str()));
    let keys: Vec<EntryKey> = (0..20).map(|i| key("moved", &format!("e{i}"))).collect();
    assert_eq!(store.delete_entries(&keys).await.unwrap(), 20);
}

/// On a cluster, a batch is written whole or not at all per slot: a corrupt stored entry
/// refuses the entries of its slot, the others' are written, and the store says how many.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_entry_on_a_cluster_refuses_its_slot() {
    let (cluster, store) = cluster_store().await;
    let slots: HashSet<u16> = ["good3", "bad", "good4"]
        .iter()
        .map(|id| cluster.slot_of(&format!("enrich:object:food:{id}")))
        .collect();
    assert_eq!(slots.len(), 3, "the test wants three slots");
    let name = "enrich:object:food:bad";
    let node = cluster.owner_of(cluster.slot_of(name));
    redis::cmd("SET")
        .arg(name)
        .arg("garbage")
        .exec(&mut cluster.node_connection(node))
        .unwrap();
    refuses_its_batch_whole(&store, 2).await;
    for id in ["good3", "good4"] {
        store.get_entry(&key("food", id)).await.unwrap();
    }
}

/// On a cluster too: each master announces the entry writes it executes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entry_writes_reach_other_enrichers_on_a_cluster() {
    let cluster = start_cluster().await;
    let a = support::watched_enricher(&cluster.url(), Duration::from_secs(5)).await;
    let b = support::watched_enricher(&cluster.url(), Duration::from_secs(5)).await;
    let v = |e: &Value| e["data"]["v"].as_i64().unwrap_or(-1);
    let ids: Vec<String> = (0..12).map(|i| format!("food:e{i}")).collect();
    for id in &ids {
        assert_eq!(object(&b, id).await["error"], "ReferenceNotFound");
    }
    for round in 0..3 {
        let batch: Vec<NewEntry> = (0..12)
            .map(|i| entry("food", &format!("e{i}"), json!({ "v": round })))
            .collect();
        a.users().upsert_entries(&batch).await.unwrap();
        for id in &ids {
            until_object(&b, id, |e| v(e) == round).await;
        }
    }
    let keys: Vec<EntryKey> = ids.iter().map(|id| EntryKey::parse(id).unwrap()).collect();
    assert_eq!(a.users().delete_entries(&keys).await.unwrap(), 12);
    for id in &ids {
        until_object(&b, id, |e| e["error"] == "ReferenceNotFound").await;
    }
}
