//! One behavioural suite for every store backend: each behaviour is one test body, run against
//! memory, a redb file, a private `redis-server`, and a private three-master Redis Cluster.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use enrich::store::{self, ImportOutcome, ImportUser, SharedStore, StoreOptions};
use enrich::{ErrorKind, NewUser, Timestamp, UserId};
use serde_json::json;
use support::{RedisServer, temp_db};

store_suite!(
    add_then_get,
    add_twice_conflicts,
    get_or_create_returns_stored_user_untouched,
    update_replaces_data_and_keeps_created_at,
    update_and_delete_of_missing_user_are_not_found,
    delete_removes,
    get_many_answers_in_order,
    import_skips_or_overrides,
    import_keeps_given_timestamps,
    racing_adds_create_once,
    racing_get_or_create_agree,
    racing_updates_keep_created_at,
    large_user_round_trips,
);

fn id(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn user(s: &str, data: serde_json::Value) -> NewUser {
    NewUser::new(s, Some(data)).unwrap()
}

async fn add_then_get(store: SharedStore) {
    let added = store
        .add(
            &user("alice", json!({"name": "Alice", "z": 1, "a": [1, 2]})),
            false,
        )
        .await
        .unwrap();
    assert!(added.created);
    let got = store.get(&id("alice")).await.unwrap();
    assert_eq!(got, added.user);
    let text = got.as_str();
    let parsed = got.parse().unwrap();
    assert_eq!(parsed.created_at, parsed.updated_at);
    assert_eq!(parsed.created_at.len(), 27);
    let expected = format!(
        r#"{{"created_at":"{0}","updated_at":"{0}","id":"alice","data":{{"name":"Alice","z":1,"a":[1,2]}}}}"#,
        parsed.created_at
    );
    assert_eq!(text, expected);
}

async fn add_twice_conflicts(store: SharedStore) {
    store
        .add(&user("bob", json!({"v": 1})), false)
        .await
        .unwrap();
    let err = store
        .add(&user("bob", json!({"v": 2})), false)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("\"bob\""), "{err}");
    let got = store.get(&id("bob")).await.unwrap().parse().unwrap();
    assert_eq!(got.data["v"], 1);
}

async fn get_or_create_returns_stored_user_untouched(store: SharedStore) {
    let first = store
        .add(&user("carol", json!({"v": 1})), true)
        .await
        .unwrap();
    assert!(first.created);
    let again = store
        .add(&user("carol", json!({"v": 2})), true)
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.user, first.user);
}

async fn update_replaces_data_and_keeps_created_at(store: SharedStore) {
    let created = store
        .add(&user("dave", json!({"a": 1, "b": 2})), false)
        .await
        .unwrap()
        .user;
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let updated = store.update(&user("dave", json!({"c": 3}))).await.unwrap();
    let before = created.parse().unwrap();
    let after = updated.parse().unwrap();
    assert_eq!(after.created_at, before.created_at);
    assert!(after.updated_at > before.updated_at, "{after:?}");
    assert_eq!(after.data, json!({"c": 3}).as_object().unwrap().clone());
    assert_eq!(store.get(&id("dave")).await.unwrap(), updated);
}

async fn update_and_delete_of_missing_user_are_not_found(store: SharedStore) {
    let err = store.update(&user("nobody", json!({}))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("\"nobody\""), "{err}");
    let err = store.delete(&id("nobody")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = store.get(&id("nobody")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

async fn delete_removes(store: SharedStore) {
    store.add(&user("erin", json!({})), false).await.unwrap();
    store.delete(&id("erin")).await.unwrap();
    assert!(store.get(&id("erin")).await.unwrap_err().is_not_found());
    // A deleted user can be created again, with new timestamps.
    assert!(
        store
            .add(&user("erin", json!({})), false)
            .await
            .unwrap()
            .created
    );
}

async fn get_many_answers_in_order(store: SharedStore) {
    for name in ["u1", "u2", "u3"] {
        store
            .add(&user(name, json!({"n": name})), false)
            .await
            .unwrap();
    }
    let ids = [id("u3"), id("missing"), id("u1"), id("u3")];
    let found = store.get_many(&ids).await.unwrap();
    assert_eq!(found.len(), 4);
    assert_eq!(found[0].as_ref().unwrap().parse().unwrap().id, "u3");
    assert!(found[1].is_none());
    assert_eq!(found[2].as_ref().unwrap().parse().unwrap().id, "u1");
    assert_eq!(found[3], found[0]);
    assert!(store.get_many(&[]).await.unwrap().is_empty());
}

fn import(s: &str, data: serde_json::Value) -> ImportUser {
    ImportUser::new(user(s, data), None, None).unwrap()
}

async fn import_skips_or_overrides(store: SharedStore) {
    let original = store
        .add(&user("keep", json!({"v": 0})), false)
        .await
        .unwrap()
        .user;
    let batch = [
        import("keep", json!({"v": 1})),
        import("new1", json!({"v": 1})),
    ];
    let outcomes = store.import(&batch, false).await.unwrap();
    assert_eq!(outcomes, [ImportOutcome::Skipped, ImportOutcome::Created]);
    assert_eq!(store.get(&id("keep")).await.unwrap(), original);

    let batch = [import("keep", json!({"v": 2})), import("new2", json!({}))];
    let outcomes = store.import(&batch, true).await.unwrap();
    assert_eq!(
        outcomes,
        [ImportOutcome::Overridden, ImportOutcome::Created]
    );
    let kept = store.get(&id("keep")).await.unwrap();
    assert_eq!(kept.parse().unwrap().data["v"], 2);
    assert_eq!(kept.created_at(), original.created_at());
}

async fn import_keeps_given_timestamps(store: SharedStore) {
    let t1 = Timestamp::parse("2021-04-13T22:53:19.670051Z").unwrap();
    let t2 = Timestamp::parse("2021-05-01T00:00:00Z").unwrap();
    let u = user("migrated", json!({"name": "M"}));
    let batch = [ImportUser::new(u.clone(), Some(t1), Some(t2)).unwrap()];
    store.import(&batch, true).await.unwrap();
    let got = store.get(&id("migrated")).await.unwrap();
    assert_eq!(got, u.to_json(t1, t2));
    // Overriding with explicit timestamps takes them too.
    let batch = [ImportUser::new(u.clone(), Some(t2), Some(t2)).unwrap()];
    assert_eq!(
        store.import(&batch, true).await.unwrap(),
        [ImportOutcome::Overridden]
    );
    assert_eq!(store.get(&id("migrated")).await.unwrap(), u.to_json(t2, t2));
}

async fn racing_adds_create_once(store: SharedStore) {
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.add(&user("race", json!({ "i": i })), false).await })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(added) => {
                assert!(added.created);
                created += 1;
            }
            Err(err) => assert_eq!(err.kind(), ErrorKind::Conflict),
        }
    }
    assert_eq!(created, 1);
}

async fn racing_get_or_create_agree(store: SharedStore) {
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.add(&user("goc", json!({ "i": i })), true).await })
        })
        .collect();
    let mut answers = HashSet::new();
    let mut created = 0;
    for task in tasks {
        let added = task.await.unwrap().unwrap();
        created += usize::from(added.created);
        answers.insert(added.user);
    }
    assert_eq!(created, 1);
    assert_eq!(answers.len(), 1, "{answers:?}");
}

async fn racing_updates_keep_created_at(store: SharedStore) {
    let created = store
        .add(&user("upd", json!({})), false)
        .await
        .unwrap()
        .user;
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.update(&user("upd", json!({ "i": i }))).await })
        })
        .collect();
    for task in tasks {
        let updated = task.await.unwrap().unwrap();
        assert_eq!(updated.created_at(), created.created_at());
    }
    let last = store.get(&id("upd")).await.unwrap();
    assert_eq!(last.created_at(), created.created_at());
}

async fn large_user_round_trips(store: SharedStore) {
    // {"id":"big","data":{"k":"…"}} is 28 + n bytes: exactly at the limit.
    let value = "é".repeat(5) + &"v".repeat(10_240 - 28 - 10);
    let big = user("big", json!({ "k": value }));
    let stored = store.add(&big, false).await.unwrap().user;
    assert_eq!(store.get(&id("big")).await.unwrap(), stored);
    assert!(
        NewUser::new("big", Some(json!({ "k": value + "v" })))
            .unwrap_err()
            .is_invalid_input()
    );
}

#[tokio::test]
async fn file_store_persists_across_opens() {
    let (_dir, path) = temp_db();
    let url = format!("file:{}", path.display());
    let written = {
        let store = store::open(&url, &StoreOptions::new()).await.unwrap();
        store
            .add(&user("p", json!({"x": 1})), false)
            .await
            .unwrap()
            .user
    };
    let store = store::open(&url, &StoreOptions::new()).await.unwrap();
    assert_eq!(store.get(&id("p")).await.unwrap(), written);
}

#[tokio::test]
async fn namespaces_do_not_see_each_other() {
    let server = RedisServer::start();
    let (_dir, path) = temp_db();
    for url in [server.url(), format!("file:{}", path.display())] {
        let a = store::open(&url, &StoreOptions::new().namespace("a"))
            .await
            .unwrap();
        let b = store::open(&url, &StoreOptions::new().namespace("b"))
            .await
            .unwrap();
        a.add(&user("same", json!({"ns": "a"})), false)
            .await
            .unwrap();
        assert!(
            b.get(&id("same")).await.unwrap_err().is_not_found(),
            "{url}"
        );
        b.add(&user("same", json!({"ns": "b"})), false)
            .await
            .unwrap();
        assert_eq!(
            a.get(&id("same")).await.unwrap().parse().unwrap().data["ns"],
            "a"
        );
        assert_eq!(
            b.get(&id("same")).await.unwrap().parse().unwrap().data["ns"],
            "b"
        );
    }
}

#[tokio::test]
async fn redis_get_many_is_one_mget_and_a_get_per_miss() {
    let server = RedisServer::start();
    let store = store::open(&server.url(), &StoreOptions::new())
        .await
        .unwrap();
    for i in 0..10 {
        store
            .add(&user(&format!("m{i}"), json!({})), false)
            .await
            .unwrap();
    }
    server.reset_stats();
    let ids: Vec<UserId> = (0..20).map(|i| id(&format!("m{i}"))).collect();
    let found = store.get_many(&ids).await.unwrap();
    assert_eq!(found.iter().filter(|f| f.is_some()).count(), 10);
    // One MGET, and a GET of each of the ten it found missing, which tells a key that does
    // not exist from one of another type (nil to MGET too), in one pipeline.
    let (stats, calls) = server.commands_run();
    assert_eq!(calls.len(), 2, "{stats}");
    let ran = |call: &str| calls.iter().any(|c| c.starts_with(call));
    assert!(ran("cmdstat_get:calls=10,"), "{stats}");
    assert!(ran("cmdstat_mget:calls=1,"), "{stats}");
}

#[tokio::test]
async fn redis_with_password() {
    let server = RedisServer::with_password("s3cret");
    let store = store::open(&server.url_with_password("s3cret"), &StoreOptions::new())
        .await
        .unwrap();
    store.add(&user("pw", json!({})), false).await.unwrap();
    assert!(store.describe().contains("127.0.0.1"));
    assert!(!store.describe().contains("s3cret"));

    for url in [server.url_with_password("typo-4711"), server.url()] {
        let err = store::open(&url, &StoreOptions::new()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        assert!(!err.is_transient(), "{err}");
        assert!(!err.to_string().contains("typo-4711"), "{err}");
    }
}

#[tokio::test]
async fn redis_down_is_unavailable_not_missing() {
    let mut server = RedisServer::start();
    let store = store::open(&server.url(), &StoreOptions::new())
        .await
        .unwrap();
    store.add(&user("x", json!({})), false).await.unwrap();
    server.stop();
    let err = store.get(&id("x")).await.unwrap_err();
    assert!(err.is_store_fault(), "{err:?}");
    let err = store.get_many(&[id("x")]).await.unwrap_err();
    assert!(err.is_store_fault(), "{err:?}");
    let port = support::free_port();
    let err = store::open(&format!("redis://127.0.0.1:{port}"), &StoreOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

/// What Redis says about the key of `id` in the default namespace.
fn raw_user(server: &RedisServer, id: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(format!("enrich:user:{id}"))
        .query(&mut server.connection())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_go_on_while_writes_are_paused() {
    let server = RedisServer::start();
    let store = store::open(&server.url(), &StoreOptions::new())
        .await
        .unwrap();
    store.add(&user("p", json!({"v": 1})), false).await.unwrap();
    // What a failover does: the server holds every write for 3 s, from another client.
    let paused_at = std::time::Instant::now();
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("WRITE")
        .exec(&mut server.connection())
        .unwrap();
    let writer = store.clone();
    let write = tokio::spawn(async move { writer.update(&user("p", json!({"v": 2}))).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let found = store.get_many(&[id("p"), id("nobody")]).await.unwrap();
        let took = started.elapsed();
        assert!(found[0].is_some() && found[1].is_none());
        assert!(
            took < std::time::Duration::from_millis(500),
            "a read took {took:?} behind a paused write"
        );
    }
    assert!(!write.is_finished(), "the write was not held back");
    // The write waits for the pause, which outlasts the 2 s response timeout: its answer never
    // comes, so its outcome is unknown — not "unavailable", which would invite a blind retry.
    let err = write.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err}");
    assert!(err.to_string().contains("may have been applied"), "{err}");
    assert!(!err.is_transient());
    // Once the pause is over the store works again, whatever became of that write.
    tokio::time::sleep(std::time::Duration::from_millis(3200).saturating_sub(paused_at.elapsed()))
        .await;
    // Whether the held write was applied depends on what the server did with it: our client
    // closes a connection whose answer is overdue, and Redis drops the held command of a
    // client that is gone, so here it was not; had the answer been lost on the way back, it
    // would have been. Either way the stored user is whole, one version or the other.
    let after: serde_json::Value = serde_json::from_str(&raw_user(&server, "p").unwrap()).unwrap();
    assert!(
        [1, 2].contains(&after["data"]["v"].as_i64().unwrap()),
        "{after}"
    );
    let now = store.update(&user("p", json!({"v": 3}))).await.unwrap();
    assert_eq!(now.parse().unwrap().data["v"], 3);
    assert_eq!(raw_user(&server, "p").as_deref(), Some(now.as_str()));
}

/// Writes that arrive together at a server whose handshake stalls (a password, every client
/// paused) share the one failed attempt to reconnect: all answered after one ping and one
/// connect timeout (2 s each), not one connect timeout after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_queued_behind_a_failed_reconnect_share_its_failure() {
    let server = RedisServer::with_password("pw");
    let store = store::open(&server.url_with_password("pw"), &StoreOptions::new())
        .await
        .unwrap();
    store.add(&user("q", json!({"v": 1})), false).await.unwrap();
    // Idle for over a second: the next write pings its connection first.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let mut admin = redis::Client::open(server.url_with_password("pw"))
        .unwrap()
        .get_connection()
        .unwrap();
    // Longer than three connect timeouts: writes trying in turn would outlast it.
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(9_000)
        .arg("ALL")
        .exec(&mut admin)
        .unwrap();
    let started = std::time::Instant::now();
    let writes: Vec<_> = (0..5)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let result = store.update(&user("q", json!({ "v": i }))).await;
                (result, started.elapsed())
            })
        })
        .collect();
    for write in writes {
        let (result, took) = write.await.unwrap();
        let err = result.unwrap_err();
        assert_ne!(err.kind(), ErrorKind::OutcomeUnknown, "{err}");
        assert!(
            took < std::time::Duration::from_millis(5_500),
            "a write answered after {took:?}: {err}"
        );
    }
}

#[tokio::test]
async fn a_user_without_write_permission_is_refused_at_once() {
    let server = RedisServer::start();
    redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "reader",
            "on",
            ">reader-secret-7",
            "~*",
            "+get",
            "+mget",
            "+ping",
        ])
        .exec(&mut server.connection())
        .unwrap();
    let url = format!("redis://reader:reader-secret-7@127.0.0.1:{}", server.port());
    let store = store::open(&url, &StoreOptions::new()).await.unwrap();
    assert!(store.get(&id("a")).await.unwrap_err().is_not_found());
    let err = store.add(&user("a", json!({})), false).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("NOPERM") && text.contains("does not permit"),
        "{text}"
    );
    assert!(text.contains(&server.url()), "{text}");
    assert!(!text.contains("reader-secret-7"), "{text}");
    assert_eq!(raw_user(&server, "a"), None);
}

#[tokio::test]
async fn a_full_redis_is_store_full() {
    let server = RedisServer::start();
    server.cap_memory("2mb");
    let store = store::open(&server.url(), &StoreOptions::new())
        .await
        .unwrap();
    let data = json!({ "k": "v".repeat(9_000) });
    let mut refused = None;
    for i in 0..2_000 {
        match store
            .add(&user(&format!("u{i}"), data.clone()), false)
            .await
        {
            Ok(_) => {}
            Err(err) => {
                refused = Some((i, err));
                break;
            }
        }
    }
    let (i, err) = refused.expect("2,000 users of 9 KB fit in 2 MB");
    assert_eq!(err.kind(), ErrorKind::StoreFull, "{err}");
    assert!(err.to_string().contains("OOM"), "{err}");
    assert!(!err.is_transient());
    // Nothing of the refused write was stored; reads go on.
    assert_eq!(raw_user(&server, &format!("u{i}")), None);
    assert!(store.get(&id("u0")).await.is_ok());
}

#[tokio::test]
async fn a_server_without_scripting_is_an_internal_error() {
    let server = RedisServer::with_args(&[
        "--rename-command",
        "EVALSHA",
        "",
        "--rename-command",
        "EVAL",
        "",
    ]);
    let store = store::open(&server.url(), &StoreOptions::new())
        .await
        .unwrap();
    let err = store.add(&user("a", json!({})), false).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    assert!(err.to_string().contains("unknown command"), "{err}");
}

#[tokio::test]
async fn a_write_to_a_stopped_server_is_unavailable_not_unknown() {
    let mut server = RedisServer::start();
    let store = store::open(&server.url(), &StoreOptions::new())
        .await
        .unwrap();
    store.add(&user("x", json!({})), false).await.unwrap();
    server.stop();
    // Past the idle second, the write connection is checked before it carries the write, so a
    // server that is gone is found out before anything is sent.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let err = store.add(&user("y", json!({})), false).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_transient());
    // And once it is back, writes go through a new connection.
    server.restart();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    store.add(&user("y", json!({})), false).await.unwrap();
}

#[tokio::test]
async fn a_file_store_is_created_only_when_asked() {
    let (dir, path) = temp_db();
    let url = format!("file:{}", path.display());
    let err = store::open(&url, &StoreOptions::new().create_if_missing(false))
        .await
        .unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let store = store::open(&url, &StoreOptions::new()).await.unwrap();
    store.add(&user("c", json!({})), false).await.unwrap();
    drop(store);
    let store = store::open(&url, &StoreOptions::new().create_if_missing(false))
        .await
        .unwrap();
    assert!(store.get(&id("c")).await.is_ok());
    assert_eq!(store.describe(), url);
}
