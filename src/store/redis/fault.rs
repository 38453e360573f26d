//! How a failure of the Redis client becomes one of our [`ErrorKind`]s.
//!
//! The kind decides what happens next, so it must say what is true:
//!
//! - retrying may help — the server is unreachable, restarting, loading its data, failing over
//!   ([`ErrorKind::Unavailable`]), or a read was not answered in time ([`ErrorKind::Timeout`]);
//! - retrying cannot help until someone changes the configuration — the credentials or the
//!   user's permissions ([`ErrorKind::PermissionDenied`]), a server out of memory
//!   ([`ErrorKind::StoreFull`]), a certificate we do not trust, a command the server does not
//!   know ([`ErrorKind::Internal`]);
//! - a write was sent and its answer never came ([`ErrorKind::OutcomeUnknown`]): it may have
//!   been applied, so it is never reported as "unavailable", which would invite a blind retry.
//!
//! Every message names the store by its URL without the password, and never repeats anything
//! the client was given as a secret.

use redis::{ErrorKind as RedisKind, RedisError, ServerErrorKind};

use crate::error::{Error, ErrorKind};

/// A failure of a read, or of anything that wrote nothing (connecting, a `PING`).
pub(super) fn fault(describe: &str, err: RedisError) -> Error {
    classify(describe, err, false)
}

/// A failure of a write command that may have reached the server. A write refused before it
/// was sent — no connection could be made — is classified by [`fault`] instead.
pub(super) fn write_fault(describe: &str, err: RedisError) -> Error {
    classify(describe, err, true)
}

fn classify(describe: &str, err: RedisError, write: bool) -> Error {
    if let Some(code) = err.code() {
        return server_refusal(describe, code, &err);
    }
    if let Some(tls) = super::tls::fault(describe, &err) {
        return tls;
    }
    match err.kind() {
        RedisKind::AuthenticationFailed => Error::new(
            ErrorKind::PermissionDenied,
            format!("Redis at {describe} refused the credentials (wrong user name or password)"),
        ),
        // The cause names what is wrong with the configuration.
        RedisKind::InvalidClientConfig => {
            Error::invalid(format!("cannot connect to Redis at {describe}")).with_cause(err)
        }
        RedisKind::ClusterConnectionNotFound => Error::new(
            ErrorKind::Unavailable,
            format!("Redis at {describe} is unavailable"),
        )
        .with_cause(err),
        RedisKind::Io => io_fault(describe, err, write),
        _ => Error::new(
            ErrorKind::Internal,
            format!("Redis at {describe} answered something unexpected"),
        )
        .with_cause(err),
    }
}

/// A failure of a read of `key`: a key that holds another type (`WRONGTYPE`) is named as
/// [`wrong_type`] says, anything else is a [`fault`].
pub(super) fn key_fault(describe: &str, key: &str, err: RedisError) -> Error {
    match err.code() {
        Some("WRONGTYPE") => wrong_type(describe, key),
        _ => fault(describe, err),
    }
}

/// A key of ours that holds another type than a string: something else wrote it, and what a
/// user or an entry was there (if anything) cannot be told.
pub(super) fn wrong_type(describe: &str, key: &str) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!(
            "Redis at {describe} holds a value of another type than a string under {key} \
             (WRONGTYPE): not a record enrich wrote"
        ),
    )
}

/// The server answered with an error reply: whatever it was, the command was not applied.
fn server_refusal(describe: &str, code: &str, err: &RedisError) -> Error {
    let said = match err.detail() {
        Some(detail) => format!("{code} {detail}"),
        None => code.to_string(),
    };
    let (kind, what) = match code {
        "WRONGPASS" => (
            ErrorKind::PermissionDenied,
            "refused the credentials".to_string(),
        ),
        "NOAUTH" => (
            ErrorKind::PermissionDenied,
            "requires a password; give it in the URL, redis://[user]:PASSWORD@host:port"
                .to_string(),
        ),
        "NOPERM" => (
            ErrorKind::PermissionDenied,
            "does not permit this command for the user".to_string(),
        ),
        "OOM" => (
            ErrorKind::StoreFull,
            "is out of memory (maxmemory) and refuses writes".to_string(),
        ),
        "LOADING" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY" | "BUSY" => {
            (ErrorKind::Unavailable, "is unavailable for now".to_string())
        }
        // Through a cluster URL, a redirection the client could not follow is a slot map in
        // flux; through a single-node URL, it means the server is a cluster node.
        "MOVED" | "ASK" if describe.contains("+cluster://") => (
            ErrorKind::Unavailable,
            "is moving slots between nodes".to_string(),
        ),
        "MOVED" | "ASK" => (
            ErrorKind::InvalidInput,
            "is a cluster node; use a redis+cluster:// URL".to_string(),
        ),
        _ if err.kind() == RedisKind::Server(ServerErrorKind::ResponseError)
            && err
                .detail()
                .is_some_and(|d| d.starts_with("unknown command")) =>
        {
            (
                ErrorKind::Internal,
                "does not know a command enrich needs".to_string(),
            )
        }
        _ => (ErrorKind::Internal, "failed the command".to_string()),
    };
    Error::new(kind, format!("Redis at {describe} {what}: {said}"))
}

/// A failure of the connection itself.
fn io_fault(describe: &str, err: RedisError, write: bool) -> Error {
    if err.is_connection_refusal() {
        // Nothing was sent, even for a write.
        return Error::new(
            ErrorKind::Unavailable,
            format!("Redis at {describe} is unavailable"),
        )
        .with_cause(err);
    }
    if write && (err.is_timeout() || err.is_connection_dropped()) {
        let how = if err.is_timeout() {
            "did not answer a write in time"
        } else {
            "lost the connection during a write"
        };
        return Error::new(
            ErrorKind::OutcomeUnknown,
            format!("Redis at {describe} {how}; the write may have been applied"),
        )
        .with_cause(err);
    }
    if err.is_timeout() {
        return Error::new(
            ErrorKind::Timeout,
            format!("Redis at {describe} did not answer in time"),
        )
        .with_cause(err);
    }
    Error::new(
        ErrorKind::Unavailable,
        format!("Redis at {describe} is unavailable"),
    )
    .with_cause(err)
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn io(kind: io::ErrorKind) -> RedisError {
        RedisError::from(io::Error::from(kind))
    }

    fn server(code: &str, detail: &str) -> RedisError {
        redis::make_extension_error(code.to_string(), Some(detail.to_string()))
    }

    #[test]
    fn connection_failures() {
        let d = "redis://h:1";
        let refused = io(io::ErrorKind::ConnectionRefused);
        assert_eq!(fault(d, refused.clone()).kind(), ErrorKind::Unavailable);
        // A refused connection means nothing was sent, even for a write.
        assert_eq!(write_fault(d, refused).kind(), ErrorKind::Unavailable);
        let timeout = io(io::ErrorKind::TimedOut);
        assert_eq!(fault(d, timeout.clone()).kind(), ErrorKind::Timeout);
        let unknown = write_fault(d, timeout);
        assert_eq!(unknown.kind(), ErrorKind::OutcomeUnknown);
        assert!(
            unknown.to_string().contains("may have been applied"),
            "{unknown}"
        );
        let reset = io(io::ErrorKind::ConnectionReset);
        assert_eq!(fault(d, reset.clone()).kind(), ErrorKind::Unavailable);
        assert_eq!(write_fault(d, reset).kind(), ErrorKind::OutcomeUnknown);
    }

    #[test]
    fn refusals_by_the_server() {
        let d = "redis://h:1";
        for (code, kind) in [
            ("WRONGPASS", ErrorKind::PermissionDenied),
            ("NOAUTH", ErrorKind::PermissionDenied),
            ("NOPERM", ErrorKind::PermissionDenied),
            ("OOM", ErrorKind::StoreFull),
            ("LOADING", ErrorKind::Unavailable),
            ("MASTERDOWN", ErrorKind::Unavailable),
            ("TRYAGAIN", ErrorKind::Unavailable),
            ("CLUSTERDOWN", ErrorKind::Unavailable),
            ("READONLY", ErrorKind::Unavailable),
            ("MOVED", ErrorKind::InvalidInput),
            ("NOSCRIPT", ErrorKind::Internal),
            ("WEIRD", ErrorKind::Internal),
        ] {
            // A refusal is an answer: even a write was not applied.
            for err in [
                fault(d, server(code, "some detail")),
                write_fault(d, server(code, "some detail")),
            ] {
                assert_eq!(err.kind(), kind, "{code}: {err}");
                assert!(err.to_string().contains(code), "{err}");
                assert!(err.to_string().contains(d), "{err}");
            }
        }
        let moved = fault("redis+cluster://h:1,h:2", server("MOVED", "1 h:2"));
        assert_eq!(moved.kind(), ErrorKind::Unavailable, "{moved}");
        let auth = fault(
            d,
            RedisError::from((
                RedisKind::AuthenticationFailed,
                "Password authentication failed",
            )),
        );
        assert_eq!(auth.kind(), ErrorKind::PermissionDenied);
        assert!(auth.to_string().contains("credentials"), "{auth}");
    }
}
