//! What the `tls` feature brings: the certificates a server's must chain to (see
//! [`super`]), the crypto provider, and the TLS error behind a failed connection.

use std::sync::{Arc, Once, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use redis::{RedisError, TlsCertificates};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

use crate::error::{Error, Result};

/// Installs ring as rustls's process-wide crypto provider, once. rustls cannot pick one by
/// itself when none is installed (it panics); a provider the application installed first is
/// kept.
pub(super) fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The TLS error behind an I/O failure, if that is what it was.
pub(super) fn tls_error(err: &RedisError) -> Option<&rustls::Error> {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    // The client keeps the I/O error behind an `Arc`, which is what `source` hands out.
    let source = std::error::Error::source(err)?;
    let io = match source.downcast_ref::<Shared>() {
        Some(shared) => shared.downcast_ref::<std::io::Error>()?,
        None => source.downcast_ref::<std::io::Error>()?,
    };
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The roots as the Redis client takes them.
pub(super) fn certificates() -> Result<TlsCertificates> {
    Ok(TlsCertificates {
        client_tls: None,
        root_cert: Some(trust_roots()?.to_vec()),
    })
}

/// Every CA a server certificate may chain to, as one PEM bundle: Mozilla's roots, then the
/// system's (or those of `SSL_CERT_FILE` / `SSL_CERT_DIR`). Read once per process.
pub(super) fn trust_roots() -> Result<Arc<Vec<u8>>> {
    static ROOTS: OnceLock<Arc<Vec<u8>>> = OnceLock::new();
    if let Some(roots) = ROOTS.get() {
        return Ok(roots.clone());
    }
    let mut certs: Vec<CertificateDer<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS.to_vec();
    certs.extend(local_roots()?);
    let mut pem = Vec::with_capacity(certs.len() * 2048);
    for cert in certs {
        // The client refuses the whole bundle if one certificate cannot be a trust anchor
        // (system stores hold a few odd ones), so only usable ones go in.
        if RootCertStore::empty().add(cert.clone()).is_ok() {
            pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
            for line in STANDARD.encode(cert.as_ref()).as_bytes().chunks(64) {
                pem.extend_from_slice(line);
                pem.push(b'\n');
            }
            pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
        }
    }
    Ok(ROOTS.get_or_init(|| Arc::new(pem)).clone())
}

/// The system's CAs, or those that `SSL_CERT_FILE` / `SSL_CERT_DIR` name. A file the user
/// named that cannot be read, or holds no certificate, is an error; a bad entry in the system's
/// store is only worth a warning.
fn local_roots() -> Result<Vec<CertificateDer<'static>>> {
    let named = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
        .iter()
        .filter_map(|var| std::env::var_os(var).map(|v| format!("{var}={}", v.to_string_lossy())))
        .collect::<Vec<_>>();
    let found = rustls_native_certs::load_native_certs();
    if named.is_empty() {
        for err in &found.errors {
            tracing::warn!("skipping part of the system's CA store: {err}");
        }
        return Ok(found.certs);
    }
    let named = named.join(", ");
    if let Some(err) = found.errors.into_iter().next() {
        return Err(
            Error::invalid(format!("cannot read the CA certificates of {named}")).with_cause(err),
        );
    }
    if found.certs.is_empty() {
        return Err(Error::invalid(format!(
            "{named} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(found.certs)
}

#[cfg(test)]
mod tests {
    use super::super::client;
    use super::*;

    #[test]
    fn the_bundle_parses_back() {
        let pem = trust_roots().unwrap();
        let parsed = rustls::pki_types::pem::PemObject::pem_slice_iter(&pem)
            .collect::<Result<Vec<CertificateDer<'_>>, _>>()
            .unwrap();
        assert!(parsed.len() >= webpki_root_certs::TLS_SERVER_ROOT_CERTS.len() / 2);
        let mut store = RootCertStore::empty();
        for cert in parsed {
            store.add(cert).unwrap();
        }
    }

    #[test]
    fn tls_urls_make_clients() {
        for url in [
            "rediss://127.0.0.1:1",
            "rediss://:pw@127.0.0.1:1/#insecure",
            "redis://127.0.0.1:1",
        ] {
            client(url, "x").unwrap();
        }
        let err = client("rediss://127.0.0.1:1/#other", "rediss://127.0.0.1:1").unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
    }
}
