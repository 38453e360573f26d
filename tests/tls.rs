//! `rediss://` against a private `redis-server` speaking TLS, with a CA and a certificate made by
//! `openssl` for the test: trusted through `SSL_CERT_FILE`, refused without it, and `#insecure`.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use enrich::store::{self, StoreOptions};
use enrich::{ErrorKind, NewUser, UserId};
use support::{RedisCluster, RedisServer, TestCerts, enrich_command, fixture};

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Runs `enrich ARGS` in `dir` with `SSL_CERT_FILE` set to `ca` (or the system's bundle).
fn enrich(dir: &Path, ca: Option<&Path>, args: &[&str]) -> Output {
    let mut command = enrich_command(dir);
    command.args(args).env_remove("SSL_CERT_DIR");
    match ca {
        Some(ca) => command.env("SSL_CERT_FILE", ca),
        None => command.env_remove("SSL_CERT_FILE"),
    };
    command.output().unwrap()
}

#[test]
fn rediss_with_the_ca_in_ssl_cert_file_serves_users_and_runs() {
    let certs = TestCerts::generate();
    let server = RedisServer::with_tls(&certs, &[]);
    let dir = tempfile::tempdir().unwrap();
    let url = server.tls_url();
    let ca = Some(certs.ca());
    let out = enrich(
        dir.path(),
        ca.as_deref(),
        &["--store", &url, "users", "add", "tls", r#"{"n":1}"#],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = enrich(
        dir.path(),
        ca.as_deref(),
        &["--store", &url, "users", "get", "tls"],
    );
    assert_eq!(text(&got.stdout), text(&out.stdout));
    // The user went over TLS to the server itself.
    let stored: Option<String> = redis::cmd("GET")
        .arg("enrich:user:tls")
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(stored.as_deref(), Some(text(&out.stdout).trim_end()));

    let out = enrich(
        dir.path(),
        ca.as_deref(),
        &[
            "--store",
            &url,
            "run",
            "--users",
            &fixture("users.ndjson"),
            &fixture("activities.ndjson"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected = std::fs::read_to_string(fixture("activities.enriched.ndjson")).unwrap();
    assert_eq!(text(&out.stdout), expected);
    assert!(!dir.path().join("enrich.db").exists());
}

#[test]
fn an_untrusted_certificate_fails_at_once_and_says_why() {
    let certs = TestCerts::generate();
    let server = RedisServer::with_tls(&certs, &[]);
    let dir = tempfile::tempdir().unwrap();
    let url = server.tls_url();
    // The system's CAs (whatever SSL_CERT_FILE the environment has), not the test's.
    let system = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    for args in [
        &["--store", &url, "users", "get", "x"][..],
        &["--store", &url, "run", "--store-timeout", "30"],
    ] {
        let started = Instant::now();
        let out = enrich(dir.path(), system.as_deref(), args);
        let took = started.elapsed();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("certificate"), "{args:?}: {err}");
        assert!(err.contains("SSL_CERT_FILE"), "{args:?}: {err}");
        assert!(err.contains(&url), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        // Not retried as if the server were down: no retrying fixes a certificate.
        assert!(
            took < Duration::from_secs(5),
            "{args:?} took {took:?}: {err}"
        );
    }
}

#[test]
fn insecure_skips_the_certificate_check() {
    let certs = TestCerts::generate();
    let server = RedisServer::with_tls(&certs, &["--requirepass", "tls-pw-3"]);
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "rediss://:tls-pw-3@127.0.0.1:{}/#insecure",
        server.tls_url().rsplit(':').next().unwrap()
    );
    let out = enrich(dir.path(), None, &["--store", &url, "users", "add", "i"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = enrich(
        dir.path(),
        None,
        &["--store", &url, "users", "get", "nobody"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("tls-pw-3"));
    // The CAs named by SSL_CERT_FILE are read all the same (the Redis client reads them at
    // every connection): one that cannot be read is a mistake to fix, said at once, not a
    // server that is down, tried again.
    let missing = dir.path().join("no-such-ca.pem");
    let started = Instant::now();
    let out = enrich(
        dir.path(),
        Some(&missing),
        &["--store", &url, "users", "get", "i"],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("SSL_CERT_FILE"), "{err}");
    assert!(!err.contains("tls-pw-3"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
}

#[tokio::test]
async fn the_library_speaks_tls_too() {
    let certs = TestCerts::generate();
    let server = RedisServer::with_tls(&certs, &[]);
    let insecure = format!("{}/#insecure", server.tls_url());
    let store = store::open(&insecure, &StoreOptions::new()).await.unwrap();
    let user = NewUser::new("lib", None).unwrap();
    let added = store.add(&user, false).await.unwrap().user;
    assert_eq!(
        store.get(&UserId::parse("lib").unwrap()).await.unwrap(),
        added
    );
    assert_eq!(store.describe(), insecure);
    // Verified, the test's CA is not among the trusted ones of this process.
    let err = store::open(&server.tls_url(), &StoreOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    // So is a cluster's (whose client keeps only the text of the TLS error): not a store
    // that is down, to be retried.
    let cluster = server.tls_url().replace("rediss://", "rediss+cluster://");
    let err = store::open(&cluster, &StoreOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("SSL_CERT_FILE"), "{err}");
    // A plain client on the TLS port, and TLS on the plain port, fail clearly too.
    let plain_on_tls = server.tls_url().replace("rediss://", "redis://");
    let started = Instant::now();
    let err = store::open(&plain_on_tls, &StoreOptions::new())
        .await
        .unwrap_err();
    assert!(err.is_store_fault(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // (A plain port takes the TLS greeting for the start of a command and waits for its end:
    // that is a timeout, not a certificate to complain about.)
    let tls_on_plain = format!("rediss://127.0.0.1:{}/#insecure", server.port());
    let started = Instant::now();
    let err = store::open(&tls_on_plain, &StoreOptions::new())
        .await
        .unwrap_err();
    assert!(err.is_store_fault(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_tls_cluster_runs_the_golden_fixtures() {
    let certs = TestCerts::generate();
    let cluster = RedisCluster::start_tls(&certs);
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.tls_url();
    let ca = Some(certs.ca());
    let out = enrich(
        dir.path(),
        ca.as_deref(),
        &[
            "--store",
            &url,
            "run",
            "--users",
            &fixture("users.ndjson"),
            &fixture("activities.ndjson"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected = std::fs::read_to_string(fixture("activities.enriched.ndjson")).unwrap();
    assert_eq!(text(&out.stdout), expected);
    // Every master was watched over TLS: no invalidation stream failed to open.
    assert!(
        !text(&out.stderr).contains("invalidation"),
        "{}",
        text(&out.stderr)
    );

    let insecure = format!("{url}#insecure");
    let out = enrich(
        dir.path(),
        None,
        &["--store", &insecure, "users", "get", "alice"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = enrich(
        dir.path(),
        None,
        &["--store", &url, "users", "get", "alice"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("certificate"),
        "{}",
        text(&out.stderr)
    );
}
