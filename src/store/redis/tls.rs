//! TLS for `rediss://` and `rediss+cluster://`: the crypto provider, and the certificates a
//! server's certificate must chain to ([`roots`], the `tls` feature). A build without the
//! feature (the `redis` feature alone: no rustls, no ring) refuses those URLs, naming it.
//!
//! A server is trusted when its certificate chains to one of:
//! - Mozilla's root CAs, built in (so a managed Redis with a public certificate works even in a
//!   container without a CA bundle);
//! - the system's CA store — or, when `SSL_CERT_FILE` (a PEM file) or `SSL_CERT_DIR` is set,
//!   the certificates found there instead of the system's, as OpenSSL does. This is how a
//!   private CA is trusted.
//!
//! and its certificate names the host of the URL. A URL ending in `#insecure` skips the check
//! of the certificate altogether: the traffic is still encrypted, but anyone on the path can
//! pose as the server and read the password.

#[cfg(feature = "tls")]
mod roots;

use redis::cluster::ClusterClientBuilder;
use redis::{Client, IntoConnectionInfo, RedisError};

use crate::error::{Error, Result};

/// Readies TLS for a store at `url` (`redis://…`, `rediss://…`, or either's scheme alone):
/// installs the crypto provider and, for `rediss`, reads the trusted roots once, so that an `SSL_CERT_FILE` or
/// `SSL_CERT_DIR` that cannot be read is invalid input here, with or without `#insecure`
/// (the Redis client reads them again at every TLS connection, and would take such a file
/// for a server that is down). Without the `tls` feature, refuses `rediss`.
pub(super) fn prepare(url: &str, describe: &str) -> Result<()> {
    #[cfg(feature = "tls")]
    {
        let _ = describe;
        roots::install_crypto_provider();
        if url.starts_with("rediss") {
            roots::trust_roots()?;
        }
        Ok(())
    }
    #[cfg(not(feature = "tls"))]
    if url.starts_with("rediss") {
        Err(Error::invalid(format!(
            "store URL {describe:?} needs the `tls` feature of enrich, which this build was \
             compiled without"
        )))
    } else {
        Ok(())
    }
}

/// A client for `url`: a `rediss://` server is checked against the trusted roots (unless the
/// URL says `#insecure`). `describe` names the store in messages.
pub(super) fn client(url: &str, describe: &str) -> Result<Client> {
    prepare(url, describe)?;
    let invalid = |e| Error::invalid(format!("invalid Redis URL {describe:?}")).with_cause(e);
    let info = url.into_connection_info().map_err(invalid)?;
    #[cfg(feature = "tls")]
    if matches!(
        info.addr(),
        redis::ConnectionAddr::TcpTls {
            insecure: false,
            ..
        }
    ) {
        return Client::build_with_tls(info, roots::certificates()?).map_err(invalid);
    }
    Client::open(info).map_err(invalid)
}

/// `builder` with the roots a cluster's nodes must chain to, when they are `verified` (a
/// `rediss` URL without `#insecure`, which [`prepare`] refuses in a build without TLS).
pub(super) fn trusting(
    builder: ClusterClientBuilder,
    verified: bool,
) -> Result<ClusterClientBuilder> {
    #[cfg(feature = "tls")]
    if verified {
        return Ok(builder.certs(roots::certificates()?));
    }
    let _ = verified;
    Ok(builder)
}

/// The error of a connection that failed in its TLS handshake, if that is what `err` is: a
/// certificate refused gets a hint on how to trust its CA. It is not worth a retry.
pub(super) fn fault(describe: &str, err: &RedisError) -> Option<Error> {
    #[cfg(feature = "tls")]
    {
        let (what, refused) = match roots::tls_error(err) {
            Some(tls) => (
                tls.to_string(),
                matches!(
                    tls,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
                ),
            ),
            // The cluster client keeps only the text of the error of its first connections:
            // rustls's own words for a certificate refused.
            None => {
                let text = err.to_string();
                let at = ["invalid peer certificate", "peer sent no certificates"]
                    .iter()
                    .find_map(|words| text.find(words))?;
                (text[at..].to_string(), true)
            }
        };
        let hint = if refused {
            "; if it is signed by a private CA, point SSL_CERT_FILE at the CA's PEM file \
             (or, giving up the check of the server's identity, end the URL with #insecure)"
        } else {
            ""
        };
        Some(Error::new(
            crate::error::ErrorKind::Internal,
            format!("TLS with Redis at {describe} failed: {what}{hint}"),
        ))
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = (describe, err);
        None
    }
}

/// Run by `cargo test --lib --no-default-features --features redis tls`.
#[cfg(all(test, not(feature = "tls")))]
mod tests {
    use super::*;

    #[test]
    fn a_build_without_tls_refuses_rediss_naming_the_feature() {
        for url in ["rediss://127.0.0.1:1", "rediss://:pw@127.0.0.1:1/#insecure"] {
            let err = client(url, "rediss://127.0.0.1:1").unwrap_err();
            assert!(err.is_invalid_input(), "{err}");
            assert!(err.to_string().contains("`tls` feature"), "{err}");
        }
        let err = prepare("rediss", "rediss+cluster://127.0.0.1:1").unwrap_err();
        assert!(err.to_string().contains("`tls` feature"), "{err}");
        client("redis://127.0.0.1:1", "redis://127.0.0.1:1").unwrap();
    }
}
