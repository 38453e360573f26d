//! A file store that the process may read but not write (another user's file with mode 0644):
//! every read answers, every write fails naming the file and why, and the file is left as it
//! was.

mod support;

use support::{code, run_enrich as enrich, stderr, stdout};

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

    let as_reader = |args: &[&str], stdin: &str| {
        let mut command = support::enrich_command(dir.path());
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
