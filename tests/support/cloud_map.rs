//! AWS Cloud Map on the emulator moto (`moto_server`, PyPI `moto[server]`, which
//! scripts/test.sh installs): an [`Emulator`] on a free loopback port, killed on
//! drop, that a test can stop and start again on the same port; and an [`Admin`]
//! client that creates namespaces, services and instances, remembers them, and
//! can put them back into a restarted (empty) emulator. Every wait is bounded.
//!
//! What moto 5.2.5 does (checked against it; "source" = read in moto's
//! servicediscovery/models.py), which the main code and its tests must allow for:
//! - Start: ~0.5 s to answer; `-H 127.0.0.1 -p PORT` (a free port each), one
//!   process serves every AWS API. It runs one backend per region (a client
//!   signing for another region sees nothing) and keeps state in memory only: a
//!   restarted moto is empty (then `NamespaceNotFound`).
//! - Credentials: anything is accepted, even empty keys; unknown keys share
//!   the default account. So "bad credentials" cannot be tested on moto.
//! - Namespaces: `DiscoverInstances` finds the namespace by *name* among all
//!   types; an HTTP namespace (`CreateHttpNamespace`, no VPC needed) is enough.
//!   Every operation (namespace, register, deregister) is `SUCCESS` at once.
//! - Revision (`DiscoverInstancesRevision`): the sum, over the instances now
//!   registered, of a per-instance-id counter that each register and deregister
//!   of that id bumps. A new service answers 0; one register makes it 1 at once
//!   (a new instance is discoverable immediately). It moves on register,
//!   deregister (it *drops*: it is not monotonic, compare for inequality) and
//!   re-register; it does not move on a custom health change (as AWS documents).
//!   It can come back to an earlier value with other instances ({x}: 1, then
//!   register y and deregister x: {y}: 1), and after a restart plus
//!   re-creation it restarts from the same small numbers.
//! - `InstancesRevision` in a `DiscoverInstances` answer is the sum over the
//!   *returned* instances only (HEALTHY filter or `MaxResults` lower it): it is
//!   not comparable with `DiscoverInstancesRevision`.
//! - Re-registering an id (AWS's way to change attributes) *adds* a second entry
//!   with that id: `DiscoverInstances` answers both, old attributes first, and a
//!   deregister removes only the oldest. Change attributes with another id or
//!   deregister first, or have the reader keep the last entry per id.
//! - `HealthStatus`: HEALTHY, UNHEALTHY, ALL (the default) and
//!   HEALTHY_OR_ELSE_ALL (all when none is healthy) are honoured; instances start
//!   HEALTHY. `UpdateInstanceCustomHealthStatus` works even on a service without
//!   `HealthCheckCustomConfig` (source). `QueryParameters` filter on exact
//!   attribute values; `OptionalParameters` filter but fall back to the unfiltered
//!   list when nothing matches; `MaxResults` cuts the list (no `NextToken`).
//! - Each returned `HttpInstanceSummary` carries `InstanceId`, `NamespaceName`,
//!   `ServiceName` (as asked), `HealthStatus` and every `Attributes` entry.
//! - Errors of both discovery calls: unknown namespace name →
//!   `DiscoverInstances[Revision]Error::NamespaceNotFound` (code
//!   `NamespaceNotFound`); unknown service in a known namespace →
//!   `::ServiceNotFound`. A stopped emulator → `SdkError::DispatchFailure`
//!   (connection refused) after the SDK's 3 attempts, about 0.6 s.
//! - The SDK puts `data-` before the host of both discovery calls
//!   (`data-127.0.0.1` does not resolve): a client of the emulator must drop it,
//!   as [`client`] does.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_config::{timeout::TimeoutConfig, BehaviorVersion, Region};
use aws_sdk_servicediscovery::{
    config::{interceptors::BeforeTransmitInterceptorContextMut, ConfigBag, Credentials, Intercept, RuntimeComponents},
    error::{BoxError, SdkError},
    operation::{discover_instances::DiscoverInstancesError, discover_instances::DiscoverInstancesOutput, discover_instances_revision::DiscoverInstancesRevisionError},
    types::{CustomHealthStatus, HealthCheckCustomConfig, HealthStatusFilter, OperationStatus, OperationTargetType},
    Client,
};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};

pub const IPV4: &str = "AWS_INSTANCE_IPV4";
pub const PORT: &str = "AWS_INSTANCE_PORT";
pub const AVAILABILITY_ZONE: &str = "AVAILABILITY_ZONE";
pub const REGION: &str = "REGION";
/// The region every client here signs for: moto keeps one backend per region.
pub const TEST_REGION: &str = "us-east-1";

const BINARY: &str = "moto_server";
/// A cold `moto_server` answers in about half a second; a loaded machine is slower.
const START_BOUND: Duration = Duration::from_secs(30);
/// One SDK call, retries included.
const CALL_BOUND: Duration = Duration::from_secs(10);

/// A `moto_server` on `127.0.0.1:port`, killed on drop.
pub struct Emulator {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Emulator {
    /// Starts `moto_server` (found on `PATH`) on a free loopback port and waits
    /// until it answers. Without it this prints why and answers `None`, unless
    /// `CI=true`: CI installs it (scripts/test.sh), so there it is a failure.
    pub async fn start() -> Option<Self> {
        let found = std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).map(|dir| dir.join(BINARY)).find(|file| file.is_file()));
        let Some(binary) = found else {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "{BINARY} is not on PATH under CI=true: scripts/test.sh installs moto[server]");
            eprintln!("SKIPPED: {BINARY} is not on PATH; `pip install moto[server]` (or scripts/test.sh) to run this test");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
        let mut emulator = Self { binary, port, child: None, dir: tempfile::tempdir().expect("temp dir") };
        emulator.restart().await;
        Some(emulator)
    }

    /// `http://127.0.0.1:PORT`, for an SDK's `endpoint_url`.
    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the emulator (SIGKILL). Nothing holds its port meanwhile;
    /// [`Self::restart`] takes it again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the emulator on the same port (stopping it first if it runs) and
    /// waits until it answers. A started moto is empty: [`Admin::recreate`]
    /// puts back what an [`Admin`] made.
    pub async fn restart(&mut self) {
        self.stop();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log()).expect("moto log");
        let child = Command::new(&self.binary)
            // Without -H it binds 127.0.0.1 as well; say so, the tests rely on it.
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("moto log"))
            .stderr(log)
            .spawn()
            .expect("moto_server starts");
        self.child = Some(child);
        self.wait_answering().await;
    }

    async fn wait_answering(&mut self) {
        let probe = format!("{}/moto-api/", self.endpoint_url());
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("HTTP client");
        let deadline = tokio::time::Instant::now() + START_BOUND;
        loop {
            if http.get(&probe).send().await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("moto_server exited with {status} on port {}: {}", self.port, self.log_text());
            }
            assert!(tokio::time::Instant::now() < deadline, "moto_server did not answer within {START_BOUND:?}: {}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The emulator's output (every start appends to it).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("moto.log")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An SDK config for the emulator: region [`TEST_REGION`], static test
/// credentials, rustls on ring, every call bounded by [`CALL_BOUND`].
pub async fn sdk_config(endpoint_url: &str) -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(TEST_REGION))
        .credentials_provider(Credentials::new("AKIDSXDSTEST", "sxds-test-secret", None, None, "sxds-tests"))
        .endpoint_url(endpoint_url)
        .http_client(http)
        .timeout_config(TimeoutConfig::builder().operation_timeout(CALL_BOUND).build())
        .load()
        .await
}

/// Drops the `data-` host prefix the SDK puts before the endpoint of
/// `DiscoverInstances` and `DiscoverInstancesRevision` (`data-127.0.0.1` does
/// not resolve). It rewrites the URI before signing, so the signature stays
/// valid, and needs only the SDK's re-exports: `EndpointPrefix` itself lives in
/// `aws-smithy-runtime-api`, which the tests cannot name.
#[derive(Debug)]
struct NoHostPrefix;

impl Intercept for NoHostPrefix {
    fn name(&self) -> &'static str {
        "NoHostPrefix"
    }

    fn modify_before_signing(&self, context: &mut BeforeTransmitInterceptorContextMut<'_>, _: &RuntimeComponents, _: &mut ConfigBag) -> Result<(), BoxError> {
        let request = context.request_mut();
        if let Some((scheme, host)) = request.uri().split_once("://data-") {
            let uri = format!("{scheme}://{host}");
            request.set_uri(uri)?;
        }
        Ok(())
    }
}

/// A client of the emulator for admin calls (which have no host prefix) and
/// the two discovery calls (whose prefix [`NoHostPrefix`] drops).
pub async fn client(endpoint_url: &str) -> Client {
    let config = aws_sdk_servicediscovery::config::Builder::from(&sdk_config(endpoint_url).await).interceptor(NoHostPrefix).build();
    Client::from_conf(config)
}

/// What an [`Admin`] made, by name, with the emulator's current ids.
#[derive(Default)]
struct Made {
    /// Namespace name → id.
    namespaces: BTreeMap<String, String>,
    /// (namespace, service) → the service's id and instances.
    services: BTreeMap<(String, String), MadeService>,
}

struct MadeService {
    id: String,
    /// Instance id → (attributes, healthy).
    instances: BTreeMap<String, (BTreeMap<String, String>, bool)>,
}

/// Creates Cloud Map state on the emulator and remembers it, so that
/// [`Self::recreate`] can replay it after [`Emulator::restart`]. Cheap to clone.
#[derive(Clone)]
pub struct Admin(Arc<AdminInner>);

struct AdminInner {
    client: Client,
    /// A std Mutex: held for map look-ups only, never across an SDK call.
    made: Mutex<Made>,
}

impl Admin {
    pub async fn new(emulator: &Emulator) -> Self {
        Self(Arc::new(AdminInner { client: client(&emulator.endpoint_url()).await, made: Mutex::default() }))
    }

    /// The underlying client, for calls the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.0.client
    }

    /// HTTP namespace `namespace` (created unless this admin made it) with service
    /// `service` in it, which takes custom health checks.
    pub async fn create_service(&self, namespace: &str, service: &str) -> Service {
        let namespace_id = match self.namespace_id(namespace) {
            Some(id) => id,
            None => self.create_namespace(namespace).await,
        };
        let created = self
            .client()
            .create_service()
            .name(service)
            .namespace_id(&namespace_id)
            .health_check_custom_config(HealthCheckCustomConfig::builder().build())
            .send()
            .await
            .expect("CreateService");
        let id = created.service().and_then(|s| s.id()).expect("CreateService answers the service id").to_owned();
        let key = (namespace.to_owned(), service.to_owned());
        self.0.made.lock().unwrap().services.insert(key, MadeService { id, instances: BTreeMap::new() });
        Service { admin: self.clone(), namespace: namespace.to_owned(), name: service.to_owned() }
    }

    fn namespace_id(&self, namespace: &str) -> Option<String> {
        self.0.made.lock().unwrap().namespaces.get(namespace).cloned()
    }

    async fn create_namespace(&self, namespace: &str) -> String {
        let created = self.client().create_http_namespace().name(namespace).send().await.expect("CreateHttpNamespace");
        let operation = created.operation_id().expect("CreateHttpNamespace answers an operation id");
        let id = self.wait_operation(operation).await.remove(&OperationTargetType::Namespace).expect("the operation names the namespace");
        self.0.made.lock().unwrap().namespaces.insert(namespace.to_owned(), id.clone());
        id
    }

    /// Waits until operation `id` succeeded (moto answers SUCCESS at once, AWS
    /// takes a while); answers its targets.
    async fn wait_operation(&self, id: &str) -> std::collections::HashMap<OperationTargetType, String> {
        let deadline = tokio::time::Instant::now() + CALL_BOUND;
        loop {
            let answer = self.client().get_operation().operation_id(id).send().await.expect("GetOperation");
            let operation = answer.operation().expect("GetOperation answers the operation");
            match operation.status() {
                Some(OperationStatus::Success) => return operation.targets().cloned().unwrap_or_default(),
                Some(OperationStatus::Fail) => panic!("operation {id} failed: {operation:?}"),
                _ => {}
            }
            assert!(tokio::time::Instant::now() < deadline, "operation {id} still {:?} after {CALL_BOUND:?}", operation.status());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Puts back every namespace, service, instance and health status this
    /// admin made, e.g. into an emulator that was restarted (and so is empty).
    /// Ids change; names, attributes and health stay.
    pub async fn recreate(&self) {
        let made = std::mem::take(&mut *self.0.made.lock().unwrap());
        for ((namespace, name), service) in made.services {
            let recreated = self.create_service(&namespace, &name).await;
            for (instance, (attributes, healthy)) in service.instances {
                let attributes: Vec<(&str, &str)> = attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                recreated.register(&instance, &attributes).await;
                if !healthy {
                    recreated.set_healthy(&instance, false).await;
                }
            }
        }
    }
}

/// One Cloud Map service made by an [`Admin`], named as `DiscoverInstances`
/// names it: by namespace name and service name.
#[derive(Clone)]
pub struct Service {
    admin: Admin,
    pub namespace: String,
    pub name: String,
}

impl Service {
    fn with_made<T>(&self, f: impl FnOnce(&mut MadeService) -> T) -> T {
        let mut made = self.admin.0.made.lock().unwrap();
        let service = made.services.get_mut(&(self.namespace.clone(), self.name.clone())).expect("a service this admin made");
        f(service)
    }

    fn id(&self) -> String {
        self.with_made(|s| s.id.clone())
    }

    /// Registers `instance` with `attributes`, e.g. `[(IPV4, "127.0.0.1"),
    /// (PORT, "8080"), (AVAILABILITY_ZONE, "us-east-1a")]`. Registering an id
    /// again gives moto a second entry with it (see the module notes).
    pub async fn register(&self, instance: &str, attributes: &[(&str, &str)]) {
        let attributes: BTreeMap<String, String> = attributes.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let sent = self
            .admin
            .client()
            .register_instance()
            .service_id(self.id())
            .instance_id(instance)
            .set_attributes(Some(attributes.clone().into_iter().collect()))
            .send()
            .await
            .expect("RegisterInstance");
        self.admin.wait_operation(sent.operation_id().expect("RegisterInstance answers an operation id")).await;
        self.with_made(|s| s.instances.insert(instance.to_owned(), (attributes, true)));
    }

    pub async fn deregister(&self, instance: &str) {
        let sent = self.admin.client().deregister_instance().service_id(self.id()).instance_id(instance).send().await.expect("DeregisterInstance");
        self.admin.wait_operation(sent.operation_id().expect("DeregisterInstance answers an operation id")).await;
        self.with_made(|s| s.instances.remove(instance));
    }

    /// `UpdateInstanceCustomHealthStatus` HEALTHY or UNHEALTHY.
    pub async fn set_healthy(&self, instance: &str, healthy: bool) {
        let status = if healthy { CustomHealthStatus::Healthy } else { CustomHealthStatus::Unhealthy };
        self.admin
            .client()
            .update_instance_custom_health_status()
            .service_id(self.id())
            .instance_id(instance)
            .status(status)
            .send()
            .await
            .expect("UpdateInstanceCustomHealthStatus");
        self.with_made(|s| s.instances.get_mut(instance).map(|(_, h)| *h = healthy));
    }

    /// `DiscoverInstances` with a health filter.
    pub async fn discover(&self, health: HealthStatusFilter) -> Result<DiscoverInstancesOutput, SdkError<DiscoverInstancesError>> {
        self.admin.client().discover_instances().namespace_name(&self.namespace).service_name(&self.name).health_status(health).send().await
    }

    /// The ids `DiscoverInstances` answers for `health`, sorted.
    pub async fn discover_ids(&self, health: HealthStatusFilter) -> Vec<String> {
        let answer = self.discover(health).await.expect("DiscoverInstances");
        let mut ids: Vec<String> = answer.instances().iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect();
        ids.sort();
        ids
    }

    /// `DiscoverInstancesRevision`.
    pub async fn revision(&self) -> Result<i64, SdkError<DiscoverInstancesRevisionError>> {
        let answer = self.admin.client().discover_instances_revision().namespace_name(&self.namespace).service_name(&self.name).send().await?;
        Ok(answer.instances_revision().expect("DiscoverInstancesRevision answers a revision"))
    }
}
