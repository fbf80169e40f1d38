//! AWS Cloud Map through the official AWS SDK for Rust.
//!
//! Credentials and region come from `aws-config`'s default chain, as every
//! AWS tool finds them: environment, shared profile, web identity, the ECS
//! task role (container credentials endpoint), instance metadata.
//! `AWS_ENDPOINT_URL` (or `--cloud-map-endpoint`) points it at another
//! endpoint, such as an emulator.

use std::time::Duration;

use aws_sdk_servicediscovery::{
    error::{ProvideErrorMetadata, SdkError},
    types::HealthStatusFilter,
    Client,
};
use aws_smithy_runtime_api::client::{
    endpoint::EndpointPrefix,
    interceptors::{context::BeforeTransmitInterceptorContextMut, Intercept},
    runtime_components::RuntimeComponents,
};
use aws_smithy_types::{config_bag::ConfigBag, error::display::DisplayErrorContext};

use super::{Directory, DirectoryError, Found, Query};
use crate::schema::{cloud_map_source::Health, DiscoveredInstance};

/// `DiscoverInstances` answers at most this many instances (its maximum).
const MAX_RESULTS: i32 = 1000;

/// Cloud Map's data-plane API, `DiscoverInstances` and
/// `DiscoverInstancesRevision`: the calls AWS meant for frequent polling.
#[derive(Debug, Clone)]
pub struct CloudMap {
    client: Client,
}

impl CloudMap {
    /// A client from the default credential and region chain; `endpoint`,
    /// when given, overrides `AWS_ENDPOINT_URL`.
    pub async fn from_env(endpoint: Option<&str>) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http).timeout_config(timeouts);
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_servicediscovery::config::Builder::from(&shared);
        if shared.endpoint_url().is_some() {
            config = config.interceptor(KeepEndpointHost);
        }
        tracing::info!(region = ?shared.region().map(ToString::to_string), endpoint = ?shared.endpoint_url(), "Cloud Map client");
        Self { client: Client::from_conf(config.build()) }
    }
}

/// Real AWS serves `DiscoverInstances` at `data-servicediscovery…`, so the
/// SDK prefixes the host with `data-`. An overridden endpoint
/// (`http://127.0.0.1:4566`) is used as given: `data-127.0.0.1` resolves
/// nowhere.
#[derive(Debug)]
struct KeepEndpointHost;

impl Intercept for KeepEndpointHost {
    fn name(&self) -> &'static str {
        "KeepEndpointHost"
    }

    fn modify_before_retry_loop(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        cfg.interceptor_state().unset::<EndpointPrefix>();
        Ok(())
    }
}

fn health_filter(health: Health) -> HealthStatusFilter {
    match health {
        Health::Healthy => HealthStatusFilter::Healthy,
        Health::All => HealthStatusFilter::All,
        Health::HealthyOrElseAll => HealthStatusFilter::HealthyOrElseAll,
        Health::Unhealthy => HealthStatusFilter::Unhealthy,
    }
}

/// An SDK error as the poller sees it: throttled or not, and its full
/// message (code, message and cause).
fn error<E: ProvideErrorMetadata + std::error::Error + 'static>(error: SdkError<E>) -> DirectoryError {
    let throttled = match &error {
        SdkError::ServiceError(service) => {
            matches!(service.err().code(), Some("ThrottlingException" | "RequestLimitExceeded" | "TooManyRequestsException"))
                || service.raw().status().as_u16() == 429
        }
        _ => false,
    };
    let message = match (&error, error.code()) {
        (_, Some(code)) => format!("{code}: {}", error.message().unwrap_or("no message")),
        (SdkError::DispatchFailure(_), None) => format!("cannot reach Cloud Map: {}", root_cause(&error)),
        (SdkError::TimeoutError(_), None) => "Cloud Map did not answer in time".to_owned(),
        (_, None) => DisplayErrorContext(&error).to_string(),
    };
    DirectoryError { throttled, message }
}

/// The innermost error of a chain: `Connection refused (os error 111)`
/// rather than four layers of client wrappers.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

impl Directory for CloudMap {
    fn revision<'a>(&'a self, query: &'a Query) -> super::BoxFuture<'a, Result<i64, DirectoryError>> {
        Box::pin(async move {
            let output = self.client.discover_instances_revision().namespace_name(&query.namespace).service_name(&query.service).send().await.map_err(error)?;
            Ok(output.instances_revision.unwrap_or_default())
        })
    }

    fn instances<'a>(&'a self, query: &'a Query) -> super::BoxFuture<'a, Result<Found, DirectoryError>> {
        Box::pin(async move {
            let mut request = self
                .client
                .discover_instances()
                .namespace_name(&query.namespace)
                .service_name(&query.service)
                .health_status(health_filter(query.health))
                .max_results(MAX_RESULTS);
            for (name, value) in &query.query_parameters {
                request = request.query_parameters(name, value);
            }
            for (name, value) in &query.optional_parameters {
                request = request.optional_parameters(name, value);
            }
            let output = request.send().await.map_err(error)?;
            // One instance per id, the last listed: re-registering an id
            // replaces its attributes.
            let mut by_id = std::collections::BTreeMap::new();
            for summary in output.instances.unwrap_or_default() {
                let id = summary.instance_id.unwrap_or_default();
                let instance = DiscoveredInstance {
                    id: id.clone(),
                    attributes: summary.attributes.unwrap_or_default().into_iter().collect(),
                    health: summary.health_status.map(|h| h.as_str().to_owned()).unwrap_or_default(),
                };
                by_id.insert(id, instance);
            }
            Ok(Found { revision: output.instances_revision.unwrap_or_default(), instances: by_id.into_values().collect() })
        })
    }
}
