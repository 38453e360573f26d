//! A file store opened only to read: on purpose (`StoreOptions::file_read_only`), and because
//! the process may read the file but not write it (another user's file with mode 0644). Every
//! read answers, every write fails naming the file and why, and the file is left as it was.

mod support;

use std::path::Path;

use enrich::store::{self, ImportEntry, ImportUser, SharedStore, StoreOptions};
use enrich::{EntryKey, ErrorKind, NewEntry, NewUser, UserId};
use serde_json::json;
use support::{code, run_enrich as enrich, stderr, stdout, temp_db};

fn id(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn key(collection: &str, id: &str) -> EntryKey {
    EntryKey::new(collection, id).unwrap()
}

fn user(s: &str) -> NewUser {
    NewUser::new(s, Some(json!({"name": s}))).unwrap()
}

fn entry(collection: &str, id: &str) -> NewEntry {
    NewEntry::new(key(collection, id), Some(json!({"n": 1}))).unwrap()
}

/// A store at `path` holding the user `alice` and the entry `food:burger`.
async fn written(path: &Path) {
    let store = store::open(&url(path), &StoreOptions::new()).await.unwrap();
    store.add(&user("alice"), false).await.unwrap();
    store.add_entry(&entry("food", "burger")).await.unwrap();
}

fn url(path: &Path) -> String {
    format!("file:{}", path.display())
}

fn read_only() -> StoreOptions {
    StoreOptions::new().file_read_only(true)
}

/// Every kind of write `store` takes, each refused naming `path` and saying `why`.
async fn every_write_is_refused(store: &SharedStore, path: &Path, why: &str) {
    let import = ImportUser::new(user("bob"), None, None).unwrap();
    let import_entry = ImportEntry::new(entry("food", "fries"), None, None).unwrap();
    let refusals = [
        ("add", store.add(&user("bob"), false).await.map(drop)),
        (
            "get_or_create",
            store.add(&user("alice"), true).await.map(drop),
        ),
        ("update", store.update(&user("alice")).await.map(drop)),
        ("delete", store.delete(&id("alice")).await),
        ("import", store.import(&[import], true).await.map(drop)),
        (
            "add_entry",
            store.add_entry(&entry("food", "fries")).await.map(drop),
        ),
        (
            "update_entry",
            store.update_entry(&entry("food", "burger")).await.map(drop),
        ),
        (
            "delete_entry",
            store.delete_entry(&key("food", "burger")).await,
        ),
        (
            "upsert_entries",
            store
                .upsert_entries(&[entry("food", "fries")])
                .await
                .map(drop),
        ),
        (
            "import_entries",
            (store.import_entries(&[import_entry]).await)
                .map(drop)
                .map_err(|stopped| stopped.error),
        ),
        (
            "delete_entries",
            store
                .delete_entries(&[key("food", "burger")])
                .await
                .map(drop),
        ),
        (
            "update_owned_entry",
            store
                .update_owned_entry(&entry("food", "burger"), &id("alice"))
                .await
                .map(drop),
        ),
        (
            "delete_owned_entry",
            store
                .delete_owned_entry(&key("food", "burger"), &id("alice"))
                .await,
        ),
    ];
    for (write, result) in refusals {
        let err = result.expect_err(write);
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{write}: {err}");
        let said = err.to_string();
        assert!(
            said.contains(&path.display().to_string()),
            "{write}: {said}"
        );
        assert!(said.contains("is open read-only"), "{write}: {said}");
        assert!(said.contains(why), "{write}: {said}");
    }
}

/// Reads answer from a store opened read-only, writes are refused, and nothing of the file
/// changes; a namespace that was never written reads as empty.
#[tokio::test]
async fn a_store_opened_read_only_reads_and_refuses_writes() {
    let (_dir, path) = temp_db();
    written(&path).await;
    let before = std::fs::read(&path).unwrap();

    let store = store::open(&url(&path), &read_only()).await.unwrap();
    assert_eq!(store.describe(), url(&path));
    let alice = store.get(&id("alice")).await.unwrap();
    assert!(
        alice.as_str().contains(r#""name":"alice""#),
        "{}",
        alice.as_str()
    );
    assert!(store.get(&id("bob")).await.unwrap_err().is_not_found());
    let burger = store.get_entry(&key("food", "burger")).await.unwrap();
    assert!(burger.as_str().contains(r#""n":1"#), "{}", burger.as_str());
    every_write_is_refused(&store, &path, "StoreOptions::file_read_only").await;
    // What the refused writes would have changed is as it was.
    assert_eq!(store.get(&id("alice")).await.unwrap(), alice);
    assert_eq!(
        store.get_entry(&key("food", "burger")).await.unwrap(),
        burger
    );

    // Neither of this namespace's tables exists: reads find nothing, and create nothing.
    let other = store::open(&url(&path), &read_only().namespace("other"))
        .await
        .unwrap();
    assert!(other.get(&id("alice")).await.unwrap_err().is_not_found());
    assert_eq!(other.get_many(&[id("alice")]).await.unwrap(), vec![None]);
    assert!(
        (other.get_entry(&key("food", "burger")).await)
            .unwrap_err()
            .is_not_found()
    );
    drop((store, other));
    assert!(std::fs::read(&path).unwrap() == before, "the file changed");
}

/// A store opened read-only beside processes that write it shares the file with them (it is
/// opened in their mode), and each read sees their latest commit.
#[tokio::test]
async fn a_read_only_store_follows_a_writer_beside_it() {
    let (_dir, path) = temp_db();
    written(&path).await;
    let writer = store::open(&url(&path), &StoreOptions::new())
        .await
        .unwrap();
    let reader = store::open(&url(&path), &read_only()).await.unwrap();
    assert!(reader.get(&id("bob")).await.unwrap_err().is_not_found());
    writer.add(&user("bob"), false).await.unwrap();
    assert_eq!(
        reader.get(&id("bob")).await.unwrap(),
        writer.get(&id("bob")).await.unwrap()
    );
    // A writer opened after the reader shares it too.
    let late = store::open(&url(&path), &StoreOptions::new())
        .await
        .unwrap();
    late.delete(&id("bob")).await.unwrap();
    assert!(reader.get(&id("bob")).await.unwrap_err().is_not_found());
}

/// A store opened read-only is never created: a missing file is an error naming the path, as
/// it is for work that only reads.
#[tokio::test]
async fn a_read_only_store_is_never_created() {
    let (dir, path) = temp_db();
    let err = store::open(&url(&path), &read_only()).await.unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A process that had the file open to write and was killed leaves it unclean. A read-only
/// open never repairs it: it is refused as unavailable, naming the file and saying why, until
/// the next open to write repairs it.
#[tokio::test]
async fn a_file_left_unclean_is_refused_until_a_writer_repairs_it() {
    use std::io::{BufRead, Write};

    let (dir, path) = temp_db();
    written(&path).await;
    let mut writer = support::enrich_command(dir.path())
        .args(["--store", &url(&path), "run"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // A line through it: it has the store open.
    let mut input = writer.stdin.take().unwrap();
    writeln!(input, "{{\"actor\":\"SU:alice\",\"verb\":\"eat\"}}").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(writer.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains(r#""name":"alice""#), "{line}");
    writer.kill().unwrap();
    writer.wait().unwrap();

    let err = store::open(&url(&path), &read_only()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let said = err.to_string();
    assert!(said.contains(&path.display().to_string()), "{said}");
    assert!(said.contains("was not closed cleanly"), "{said}");
    assert!(
        said.contains("the next command that may write it repairs it"),
        "{said}"
    );

    drop(
        store::open(&url(&path), &StoreOptions::new())
            .await
            .unwrap(),
    );
    let store = store::open(&url(&path), &read_only()).await.unwrap();
    assert!(store.get(&id("alice")).await.is_ok());
}

/// The id of the process's user: 0 for root.
fn euid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// A store file of another user, readable by all (0644, root's, in a 0755 directory), driven
/// through the `enrich` binary run as `nobody` (uid 65534): reads answer, and writes fail
/// with exit 1 naming the file and saying why, leaving the file as it was. Root may write any
/// file whatever its mode, so without root the file is made unwritable by its mode (0444)
/// instead, for this process itself.
#[test]
fn a_file_the_process_cannot_write_is_read_and_never_written() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("t.db");
    let store = format!("file:{}", path.display());
    let base = ["--store", store.as_str()];
    let run = |args: &[&str], stdin: &str| {
        let all: Vec<&str> = base.iter().chain(args).copied().collect();
        enrich(dir.path(), &all, stdin)
    };
    for args in [
        &["users", "add", "alice", r#"{"name":"Alice"}"#][..],
        &[
            "collections",
            "add",
            "food",
            "--id",
            "burger",
            "--data",
            r#"{"n":1}"#,
        ],
    ] {
        let out = run(args, "");
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
    }
    let root = euid() == 0;
    let mode = if root { 0o644 } else { 0o444 };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    let before = std::fs::read(&path).unwrap();
    std::fs::write(
        dir.path().join("users.ndjson"),
        "{\"id\":\"bob\",\"data\":{}}\n",
    )
    .unwrap();

    // As `nobody`, the binary runs from a copy beside the store: the directories of the
    // checkout it was built in may be closed to other users (a home directory, 0700).
    let binary = match root {
        true => {
            let copy = dir.path().join("enrich");
            std::fs::copy(env!("CARGO_BIN_EXE_enrich"), &copy).unwrap();
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
            copy
        }
        false => env!("CARGO_BIN_EXE_enrich").into(),
    };
    let as_reader = |args: &[&str], stdin: &str| {
        let mut command = std::process::Command::new(&binary);
        support::without_settings(command.current_dir(dir.path()));
        if root {
            command.uid(65534).gid(65534);
        }
        let mut child = (command.args(base).args(args))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    };

    // Reads.
    let out = as_reader(&["users", "get", "alice"], "");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(r#""name":"Alice""#),
        "{}",
        stdout(&out)
    );
    let out = as_reader(&["users", "get", "bob"], "");
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let out = as_reader(
        &["--namespace", "never-written", "users", "get", "alice"],
        "",
    );
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let out = as_reader(&["collections", "get", "food", "burger"], "");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = as_reader(&["run"], "{\"actor\":\"SU:alice\",\"verb\":\"eat\"}\n");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(r#""name":"Alice""#),
        "{}",
        stdout(&out)
    );

    // Writes.
    for args in [
        &["users", "add", "bob", "{}"][..],
        &["users", "add", "alice", "--get-or-create"],
        &["users", "update", "alice", "{}"],
        &["users", "delete", "alice"],
        &["users", "import", "users.ndjson"],
        &["run", "--users", "users.ndjson"],
        &[
            "collections",
            "add",
            "food",
            "--id",
            "fries",
            "--data",
            r#"{"n":2}"#,
        ],
        &[
            "collections",
            "update",
            "food",
            "burger",
            "--data",
            r#"{"n":2}"#,
        ],
        &["collections", "delete", "food", "burger"],
    ] {
        let out = as_reader(args, "");
        let said = stderr(&out);
        assert_eq!(code(&out), 1, "{args:?}: {said}");
        assert!(
            said.contains(&format!(
                "file store {} is open read-only because this process cannot write it",
                path.display()
            )),
            "{args:?}: {said}"
        );
        assert!(!said.contains("panicked"), "{args:?}: {said}");
    }
    assert!(std::fs::read(&path).unwrap() == before, "the file changed");
    let out = as_reader(&["users", "get", "bob"], "");
    assert_eq!(code(&out), 4, "{}", stderr(&out));
}
