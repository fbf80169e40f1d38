//! sxds: a small, standalone Envoy xDS control plane.
//!
//! The path of a bundle, from `curl -XPUT` to an Envoy:
//!
//! 1. [`api`] takes `PUT /resources/{node_type}` from a writer [`api::auth`]
//!    let through; [`bundle`] parses the JSON or YAML against [`schema`]
//!    (every Envoy v3 type, `@type` included) and validates names and
//!    references. Bad input is a 4xx naming the field.
//! 2. [`store`] writes it durably (one checksummed record of encoded
//!    resources, also kept in the node type's history) in the embedded
//!    redb or, for replicas, in etcd, deciding no-op, 409 and `If-Match`
//!    in the backend's own transaction, and publishes the new catalog on
//!    its change feed. Only then does the PUT answer 200. On etcd, every
//!    replica's watch publishes the same change on its own feed.
//! 3. [`discovery`] follows the feed and adds to each bundle the endpoints
//!    of its `endpoint_sources`, polled from AWS Cloud Map and kept in the
//!    store; a bundle without sources passes through unchanged.
//! 4. [`cache`] follows that feed and encodes each resource once per version
//!    into a [`cache::Snapshot`] per node type: its `Any`, framed as the
//!    field both SotW and delta responses carry, and a stable digest.
//! 5. [`xds`] streams (ADS and the per-type services) watch their node
//!    type's snapshot; a state machine, [`xds::stream`] for state of the
//!    world or [`xds::delta`] for delta (with [`xds::vhds`] for virtual
//!    hosts on demand), decides what is due and frames it from the
//!    snapshot's shared bytes, and the codec writes them. REST polling ([`xds::rest`]) answers from the same
//!    snapshot, holding a client that is current until it changes. ACKs
//!    and NACKs land in [`xds::status`], which `GET /nodes` and the status
//!    page at `/` show, and in [`metrics`].
//!
//! [`resource_type`] is the table of every type served; [`wire`], the bottom
//! layer, the protobuf pieces responses are assembled from; [`sorted`], how
//! lists of names in name order are walked together.
//!
//! [`net`] serves both listeners (limits, timeouts, back-off, TLS and the
//! node types a client certificate names); [`run`] wires
//! it together on listeners the caller binds, so tests start the real daemon
//! on port 0.

pub mod api;
pub mod bundle;
pub mod cache;
pub mod config;
pub mod discovery;
pub mod metrics;
pub mod net;
pub mod node_type;
pub mod preflight;
pub mod resource_type;
pub mod rollout;
pub mod schema;
pub mod sorted;
pub mod store;
pub mod wire;
pub mod xds;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::{api::ApiState, cache::Cache, store::Store, xds::status::Registry};

/// Why the daemon could not start. Once serving, nothing a client does
/// stops it: only `shutdown` does.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A setting that can only be checked at start (a token file).
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Tls(#[from] net::TlsError),
}

/// How to reach etcd: endpoints, credentials and TLS files, read now so a
/// bad path stops the start.
#[cfg(feature = "etcd")]
fn etcd_config(config: &Config, endpoints: &[String]) -> Result<store::etcd::EtcdConfig, RunError> {
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| RunError::Config(format!("cannot read {}: {e}", path.display())));
    let identity = match (&config.etcd_cert, &config.etcd_key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    Ok(store::etcd::EtcdConfig {
        endpoints: endpoints.to_vec(),
        user: config.etcd_user.clone().map(|user| (user, config.etcd_password.clone().unwrap_or_default())),
        ca: config.etcd_ca.as_deref().map(read).transpose()?,
        identity,
        history_limit: config.history.get(),
    })
}

/// The `--envoy-validate` checker, once the binary answered `--version`:
/// a wrong path stops the start rather than every PUT.
async fn preflight_envoy(envoy: &std::path::Path, timeout: std::time::Duration) -> Result<preflight::Preflight, RunError> {
    let version = tokio::process::Command::new(envoy).arg("--version").stdin(std::process::Stdio::null()).output();
    match tokio::time::timeout(std::time::Duration::from_secs(10), version).await {
        Ok(Ok(output)) if output.status.success() => {
            let version = String::from_utf8_lossy(&output.stdout);
            tracing::info!(envoy = %envoy.display(), version = version.trim(), "every PUT is checked by Envoy (--envoy-validate)");
            Ok(preflight::Preflight::new(envoy.to_owned(), timeout))
        }
        Ok(Ok(output)) => Err(RunError::Config(format!("--envoy-validate {}: `--version` exited with {}", envoy.display(), output.status))),
        Ok(Err(error)) => Err(RunError::Config(format!("--envoy-validate {}: cannot run it: {error}", envoy.display()))),
        Err(_) => Err(RunError::Config(format!("--envoy-validate {}: `--version` did not answer within 10s", envoy.display()))),
    }
}

/// Serves xDS on `xds` and the REST API on `rest` until `shutdown` is
/// cancelled, then drains both within `config.shutdown_grace`.
pub async fn run(config: &Config, xds: TcpListener, rest: TcpListener, shutdown: CancellationToken) -> Result<(), RunError> {
    let registry = Registry::default();
    // Bad TLS files stop the start before anything is opened.
    let tls = net::Tls::from_config(config, registry.metrics())?;
    if let Some(ca) = &config.xds_client_ca {
        tracing::info!(client_ca = %ca.display(), "TLS on both ports; xDS clients need a certificate naming their node type");
    } else if tls.is_some() {
        tracing::info!("TLS on both ports");
    }
    let write_policy = api::WritePolicy::new(config.token_file.as_deref(), config.allow_unauthenticated_writes).map_err(RunError::Config)?;
    let preflight = match &config.envoy_validate {
        Some(envoy) => Some(Arc::new(preflight_envoy(envoy, config.envoy_validate_timeout).await?)),
        None => None,
    };
    let store = match &config.store {
        None => {
            let (data_dir, history) = (config.data_dir.clone(), config.history.get());
            tokio::task::spawn_blocking(move || Store::open_with(&data_dir, history)).await.map_err(|e| store::StoreError::Open(e.to_string()))??
        }
        // Returns once the whole state is loaded: nothing is served before.
        #[cfg(feature = "etcd")]
        Some(endpoints) => Store::open_etcd(etcd_config(config, &endpoints.0)?, shutdown.clone()).await?,
        // etcd's client needs protoc to build, so it is a cargo feature.
        #[cfg(not(feature = "etcd"))]
        Some(_) => {
            return Err(RunError::Config(
                "this sxds was built without the etcd store: build it with `cargo build --release --features etcd` \
                 (the container image has it)"
                    .into(),
            ))
        }
    };

    // Every stored bundle, with the endpoints its sources found last, is in
    // the cache before the first stream is accepted.
    let cache = Cache::default();
    let endpoint = config.cloud_map_endpoint.clone();
    let cloud_map: discovery::DirectoryFactory = Box::new(move || {
        let endpoint = endpoint.clone();
        Box::pin(async move { Arc::new(discovery::cloud_map::CloudMap::from_env(endpoint.as_deref()).await) as Arc<dyn discovery::Directory> })
    });
    let discovery = discovery::Discovery::start(store.clone(), cloud_map, config.into(), registry.metrics().clone(), shutdown.clone()).await;
    cache.apply(&discovery.served());
    // After the cache: a halted rollout puts its canaries back on the bundle just loaded.
    let rollouts = rollout::Rollouts::load(store.clone(), cache.clone(), Some(discovery.clone()), registry.clone(), shutdown.clone()).await?;
    tracing::info!(node_types = store.catalog().len(), store = config.store.as_ref().map_or_else(|| config.data_dir.display().to_string(), |e| e.0.join(",")), "store loaded");
    let follower = tokio::spawn(cache.clone().follow(discovery.subscribe(), registry.metrics().clone(), shutdown.clone()));
    let healer = tokio::spawn(store.clone().heal(shutdown.clone()));

    let xds_server = xds::XdsServer::new(cache, registry.clone(), shutdown.clone(), config.rest_xds_hold);
    let (xds_tls, rest_tls) = tls.map(|tls| (tls.xds, tls.rest)).unzip();
    let grpc = net::serve_xds(xds, xds_server.router().await, config.into(), xds_tls, shutdown.clone());

    let mut api_state = ApiState::new(store, registry, config.body_limit, write_policy).with_discovery(discovery).with_rollouts(rollouts);
    if let Some(preflight) = preflight {
        api_state = api_state.with_preflight(preflight);
    }
    let app = api::router(api_state);
    let http = net::serve_rest(rest, app, config.into(), rest_tls, shutdown.clone());

    let grace = config.shutdown_grace;
    let servers = async { tokio::join!(grpc, http) };
    tokio::pin!(servers);
    tokio::select! {
        _ = &mut servers => {}
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "shutdown grace period over; closing what is still open");
        }
    };
    follower.abort();
    healer.abort();
    Ok(())
}
