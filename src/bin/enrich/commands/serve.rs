//! `enrich serve`.

use futures::StreamExt;

use enrich::error::{Error, ErrorKind, Result};

use super::StoreSpec;

/// What `enrich serve` was asked to do.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServeArgs {
    /// The address to listen on, `host:port`.
    pub listen: String,
    /// The API key; required.
    pub api_key: Option<String>,
    /// The API secret; required.
    pub api_secret: Option<String>,
    /// What requests, connections and the server may cost.
    pub limits: enrich::serve::Limits,
}

/// `enrich serve`: checks the credentials, opens the store, binds, says where it listens and
/// serves until SIGTERM or Ctrl-C, letting requests in flight finish.
pub(crate) async fn serve(spec: &StoreSpec, args: ServeArgs) -> Result<()> {
    let nonempty = |v: Option<String>| v.filter(|v| !v.is_empty());
    let Some(api_secret) = nonempty(args.api_secret) else {
        return Err(Error::invalid(
            "no API secret: pass --api-secret or set ENRICH_API_SECRET",
        ));
    };
    let Some(api_key) = nonempty(args.api_key) else {
        return Err(Error::invalid(
            "no API key: pass --api-key or set ENRICH_API_KEY",
        ));
    };
    let store = spec.open().await?;
    let describe = store.describe();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| Error::invalid(format!("cannot listen on {}", args.listen)).with_cause(e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::new(ErrorKind::Internal, "no local address").with_cause(e))?;
    let config = enrich::serve::ServeConfig::new(api_key, api_secret).limits(args.limits);
    let enricher = spec.enricher(config.instrument(store));
    tracing::info!("enrich serve: listening on http://{local}, store {describe}");
    enrich::serve::serve(listener, enricher, config, shutdown_signal())
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "the server failed").with_cause(e))?;
    tracing::info!("enrich serve: stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT). A second signal while the requests in progress
/// finish ends the process at once, as an operator who asks twice expects (exit 130 or 143):
/// what a request had not yet written is not written, as after a kill, which the stores
/// survive.
async fn shutdown_signal() {
    let mut stops = super::stop_signals();
    if stops.next().await.is_none() {
        return std::future::pending().await;
    }
    tokio::spawn(async move {
        if let Some(stop) = stops.next().await {
            tracing::warn!(
                "enrich serve: {} again: exiting without waiting for the requests in progress",
                stop.signal_name()
            );
            std::process::exit(i32::from(stop.exit_code()));
        }
    });
}
