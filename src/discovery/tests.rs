//! Discovery against a stand-in directory: polling, failures, the store.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
};

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use prost::Message;

use super::*;
use crate::{
    bundle::{accept, Format},
    store::IfMatch,
};

/// Answers what a test set, counting calls; a service never set answers
/// "not found", as Cloud Map does.
#[derive(Default)]
struct Fake {
    services: Mutex<HashMap<String, Result<Found, DirectoryError>>>,
    revision_calls: AtomicUsize,
    instance_calls: AtomicUsize,
}

impl Fake {
    fn set(&self, service: &str, answer: Result<Found, DirectoryError>) {
        self.services.lock().unwrap().insert(service.to_owned(), answer);
    }

    fn answer(&self, query: &Query) -> Result<Found, DirectoryError> {
        let services = self.services.lock().unwrap();
        let missing = || Err(DirectoryError { throttled: false, message: format!("ServiceNotFound: {}", query.service) });
        services.get(&query.service).cloned().unwrap_or_else(missing)
    }
}

impl Directory for Fake {
    fn revision<'a>(&'a self, query: &'a Query) -> BoxFuture<'a, Result<i64, DirectoryError>> {
        self.revision_calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { self.answer(query).map(|found| found.revision) })
    }

    fn instances<'a>(&'a self, query: &'a Query) -> BoxFuture<'a, Result<Found, DirectoryError>> {
        self.instance_calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { self.answer(query) })
    }
}

fn found(revision: i64, ips: &[&str]) -> Found {
    let instances = ips
        .iter()
        .map(|ip| DiscoveredInstance {
            id: format!("i-{ip}"),
            attributes: [(IPV4.to_owned(), (*ip).to_owned()), (ZONE.to_owned(), "us-east-1a".to_owned())].into_iter().collect(),
            health: "HEALTHY".into(),
        })
        .collect();
    Found { revision, instances }
}

/// A bundle whose EDS clusters take their endpoints from Cloud Map, one
/// cluster per service, each named after it.
fn bundle(version: &str, services: &[&str]) -> StoredBundle {
    let clusters: Vec<_> = services
        .iter()
        .map(|s| serde_json::json!({"name": s, "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}}))
        .collect();
    let sources: Vec<_> =
        services.iter().map(|s| serde_json::json!({"cluster_name": s, "cloud_map": {"namespace": "prod.local", "service": s, "port": 8080}})).collect();
    let body = serde_json::json!({"version": version, "clusters": clusters, "endpoint_sources": sources});
    accept(body.to_string().as_bytes(), Format::Json).unwrap()
}

fn node_type(name: &str) -> NodeType {
    NodeType::parse(name).unwrap()
}

const POLLING: Polling = Polling { interval: Duration::from_millis(20), refresh: Duration::from_secs(3600) };

async fn start(store: &Store, fake: &Arc<Fake>) -> Discovery {
    start_until(store, fake, CancellationToken::new()).await
}

async fn start_until(store: &Store, fake: &Arc<Fake>, shutdown: CancellationToken) -> Discovery {
    start_with(store, fake, POLLING, shutdown).await
}

async fn start_with(store: &Store, fake: &Arc<Fake>, polling: Polling, shutdown: CancellationToken) -> Discovery {
    let fake = fake.clone();
    let factory: DirectoryFactory = Box::new(move || {
        let fake = fake.clone();
        Box::pin(async move { fake as Arc<dyn Directory> })
    });
    Discovery::start(store.clone(), factory, polling, Metrics::default(), shutdown).await
}

/// Waits (at most 10 s) until `check` holds for what is served.
async fn served_when(discovery: &Discovery, what: &str, check: impl Fn(&ServedCatalog) -> bool) -> Arc<ServedCatalog> {
    let mut feed = discovery.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let served = feed.borrow_and_update().clone();
        if check(&served) {
            return served;
        }
        assert!(tokio::time::timeout_at(deadline, feed.changed()).await.is_ok(), "timed out waiting until {what}");
    }
}

/// The endpoint addresses served for `cluster` of `node_type`, if any.
fn addresses(served: &ServedCatalog, node_type: &NodeType, cluster: &str) -> Option<Vec<String>> {
    addresses_of(served.get(node_type)?, cluster)
}

/// The endpoint addresses `served` has for `cluster`, if any.
fn addresses_of(served: &Served, cluster: &str) -> Option<Vec<String>> {
    let discovered = served.discovered.as_ref()?;
    let assignment = discovered.assignments.iter().find(|a| a.name == cluster)?;
    let cla = ClusterLoadAssignment::decode(&assignment.value[..]).unwrap();
    let lb_endpoints = cla.endpoints.iter().flat_map(|l| &l.lb_endpoints);
    Some(lb_endpoints.map(|e| format!("{e:?}").split("address: \"").nth(1).unwrap().split('"').next().unwrap().to_owned()).collect())
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn instances_are_fetched_only_when_the_revision_moves_and_only_users_of_the_service_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let fake = Arc::new(Fake::default());
    fake.set("backend", Ok(found(1, &["10.0.0.1"])));
    fake.set("other", Ok(found(7, &["10.0.1.1"])));
    store.put(node_type("sidecar"), bundle("v1", &["backend"]), IfMatch::Any).await.unwrap();
    store.put(node_type("edge"), bundle("e1", &["other"]), IfMatch::Any).await.unwrap();
    let discovery = start(&store, &fake).await;

    let (sidecar, edge) = (node_type("sidecar"), node_type("edge"));
    let served = served_when(&discovery, "both sources answered", |s| addresses(s, &sidecar, "backend").is_some() && addresses(s, &edge, "other").is_some()).await;
    assert_eq!(addresses(&served, &sidecar, "backend").unwrap(), ["10.0.0.1"]);
    let eds_version = |served: &ServedCatalog, node_type: &NodeType| served[node_type].discovered.as_ref().unwrap().eds_version.clone();
    assert!(eds_version(&served, &sidecar).starts_with("v1+cloudmap.1."), "bundle version plus discovery revision: {}", eds_version(&served, &sidecar));
    assert!(eds_version(&served, &edge).starts_with("e1+cloudmap.7."));

    // Polls go on; while the revision stays, no DiscoverInstances.
    let revisions = fake.revision_calls.load(Ordering::SeqCst);
    until("several more polls", || fake.revision_calls.load(Ordering::SeqCst) >= revisions + 6).await;
    assert_eq!(fake.instance_calls.load(Ordering::SeqCst), 2, "one DiscoverInstances per source, at the first poll");

    fake.set("backend", Ok(found(2, &["10.0.0.1", "10.0.0.2"])));
    let after = served_when(&discovery, "the new instance is served", |s| addresses(s, &sidecar, "backend").is_some_and(|a| a.len() == 2)).await;
    assert!(eds_version(&after, &sidecar).starts_with("v1+cloudmap.2."));
    assert!(Arc::ptr_eq(&after[&sidecar].bundle, &served[&sidecar].bundle), "the bundle itself is untouched");
    assert!(Arc::ptr_eq(after[&edge].discovered.as_ref().unwrap(), served[&edge].discovered.as_ref().unwrap()), "a node type not using the service keeps what it had: the cache does not rebuild it");
    assert_eq!(fake.instance_calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_failing_source_keeps_its_last_endpoints_and_shows_the_error_until_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let fake = Arc::new(Fake::default());
    fake.set("backend", Ok(found(3, &["10.0.0.1", "10.0.0.2"])));
    store.put(node_type("sidecar"), bundle("v1", &["backend"]), IfMatch::Any).await.unwrap();
    let discovery = start(&store, &fake).await;
    let sidecar = node_type("sidecar");
    served_when(&discovery, "the source answered", |s| addresses(s, &sidecar, "backend").is_some()).await;
    assert_eq!(discovery.sources(&sidecar).unwrap()[0].state, "ok");

    for error in [DirectoryError { throttled: true, message: "ThrottlingException: Rate exceeded".into() }, DirectoryError { throttled: false, message: "NamespaceNotFound: prod.local".into() }] {
        fake.set("backend", Err(error.clone()));
        until("the error shows", || discovery.sources(&sidecar).unwrap()[0].poll.error.as_deref() == Some(error.message.as_str())).await;
        let status = &discovery.sources(&sidecar).unwrap()[0];
        assert_eq!((status.state, status.endpoints, status.revision), ("failing", 2, Some(3)), "{status:?}");
        assert!(status.poll.consecutive_failures >= 1 && status.poll.failing_since_unix_ms.is_some());
        assert_eq!(addresses(&discovery.served(), &sidecar, "backend").unwrap(), ["10.0.0.1", "10.0.0.2"], "the last endpoints stay served");
        fake.set("backend", Ok(found(3, &["10.0.0.1", "10.0.0.2"])));
        until("the source recovers", || discovery.sources(&sidecar).unwrap()[0].state == "ok").await;
    }
}

#[tokio::test]
async fn zero_instances_are_served_as_zero_endpoints_but_a_source_never_answered_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let fake = Arc::new(Fake::default());
    fake.set("empty", Ok(found(4, &[])));
    store.put(node_type("sidecar"), bundle("v1", &["empty", "unknown"]), IfMatch::Any).await.unwrap();
    let discovery = start(&store, &fake).await;
    let sidecar = node_type("sidecar");
    let served = served_when(&discovery, "the empty service answered", |s| addresses(s, &sidecar, "empty").is_some()).await;
    assert_eq!(addresses(&served, &sidecar, "empty").unwrap(), Vec::<String>::new(), "a service with no instances has no endpoints");
    assert_eq!(addresses(&served, &sidecar, "unknown"), None, "no assignment rather than an empty one");
    until("the missing service's error shows", || discovery.sources(&sidecar).unwrap()[1].poll.error.is_some()).await;
    let statuses = discovery.sources(&sidecar).unwrap();
    assert_eq!((statuses[0].state, statuses[1].state), ("ok", "pending"));
    assert!(statuses[1].poll.error.as_deref().unwrap().contains("ServiceNotFound"));
}

/// Waits (at most 10 s) until the store keeps `count` queries' instances.
async fn stored(store: &Store, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.discovered().await.unwrap().len() != count {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {count} stored queries");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_restart_serves_the_stored_instances_before_its_first_poll_and_unused_ones_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = node_type("sidecar");
    let shutdown = CancellationToken::new();
    {
        let store = Store::open(dir.path()).unwrap();
        let fake = Arc::new(Fake::default());
        fake.set("backend", Ok(found(9, &["10.0.0.9"])));
        store.put(sidecar.clone(), bundle("v1", &["backend"]), IfMatch::Any).await.unwrap();
        let discovery = start_until(&store, &fake, shutdown.clone()).await;
        served_when(&discovery, "the source answered", |s| addresses(s, &sidecar, "backend").is_some()).await;
        stored(&store, 1).await;
    }
    shutdown.cancel();
    // Cloud Map is out of reach after the restart.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let store = loop {
        match Store::open(dir.path()) {
            Ok(store) => break store,
            Err(error) => assert!(tokio::time::Instant::now() < deadline, "the first store stays open: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let fake = Arc::new(Fake::default());
    fake.set("backend", Err(DirectoryError { throttled: false, message: "dispatch failure: connection refused".into() }));
    let discovery = start(&store, &fake).await;
    let served = discovery.served();
    assert_eq!(addresses(&served, &sidecar, "backend").unwrap(), ["10.0.0.9"], "served at once, from the store");
    assert!(served[&sidecar].discovered.as_ref().unwrap().eds_version.starts_with("v1+cloudmap.9."));
    assert_eq!(discovery.sources(&sidecar).unwrap()[0].state, "stored");

    // A bundle without the source: its stored instances go.
    store.put(sidecar.clone(), bundle("v2", &[]), IfMatch::Any).await.unwrap();
    stored(&store, 0).await;
    served_when(&discovery, "the bundle without sources is served", |s| s[&sidecar].bundle.version == "v2").await;
    assert!(discovery.served()[&sidecar].discovered.is_none());
}

#[tokio::test]
async fn a_health_change_that_leaves_the_revision_is_seen_at_the_next_refresh_under_a_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let fake = Arc::new(Fake::default());
    fake.set("backend", Ok(found(5, &["10.0.0.1"])));
    store.put(node_type("sidecar"), bundle("v1", &["backend"]), IfMatch::Any).await.unwrap();
    let polling = Polling { interval: Duration::from_millis(10), refresh: Duration::from_millis(50) };
    let discovery = start_with(&store, &fake, polling, CancellationToken::new()).await;
    let sidecar = node_type("sidecar");
    let before = served_when(&discovery, "the source answered", |s| addresses(s, &sidecar, "backend").is_some()).await;

    let mut unhealthy = found(5, &["10.0.0.1"]);
    unhealthy.instances[0].health = "UNHEALTHY".into();
    fake.set("backend", Ok(unhealthy));
    let health = |served: &ServedCatalog| {
        let discovered = served[&sidecar].discovered.as_ref().unwrap();
        let cla = ClusterLoadAssignment::decode(&discovered.assignments[0].value[..]).unwrap();
        cla.endpoints[0].lb_endpoints[0].health_status
    };
    let after = served_when(&discovery, "the health change is served", |s| health(s) == 2).await;
    let versions = (&before[&sidecar].discovered.as_ref().unwrap().eds_version, &after[&sidecar].discovered.as_ref().unwrap().eds_version);
    assert_ne!(versions.0, versions.1, "same revision, other content: another version");
    assert!(versions.1.starts_with("v1+cloudmap.5."), "{}", versions.1);
}

#[test]
fn failed_polls_back_off_doubling_harder_when_throttled_up_to_five_minutes() {
    let interval = Duration::from_secs(5);
    let waits: Vec<u64> = (1..=8).map(|n| backoff(interval, n, false).as_secs()).collect();
    assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300, 300]);
    assert_eq!(backoff(interval, 1, true), Duration::from_secs(40), "throttled: four times harder");
    assert_eq!(backoff(interval, 100, true), MAX_BACKOFF);
    let jittered = jitter(interval);
    assert!(jittered >= interval.mul_f64(0.8) && jittered <= interval, "{jittered:?}");
}

#[tokio::test]
async fn a_rollout_candidate_has_its_new_sources_polled_until_it_is_given_up_or_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let fake = Arc::new(Fake::default());
    fake.set("backend", Ok(found(1, &["10.0.0.1"])));
    fake.set("fresh", Ok(found(5, &["10.0.5.1"])));
    store.put(node_type("sidecar"), bundle("v1", &["backend"]), IfMatch::Any).await.unwrap();
    let discovery = start(&store, &fake).await;
    let sidecar = node_type("sidecar");
    served_when(&discovery, "the stored bundle's source answered", |s| addresses(s, &sidecar, "backend").is_some()).await;
    let polled = |service: &str| discovery.lock().queries.keys().any(|q| q.service == service);
    assert!(!polled("fresh"), "no bundle names it yet");

    // The candidate adds a source: it is polled, and its endpoints ride with the candidate only.
    let candidate = Arc::new(bundle("v2", &["backend", "fresh"]));
    discovery.set_candidate(&sidecar, Some(candidate.clone()));
    let candidate_has = |cluster: &'static str, count: usize| {
        let sidecar = sidecar.clone();
        move |s: &ServedCatalog| s[&sidecar].candidate.as_deref().and_then(|c| addresses_of(c, cluster)).is_some_and(|a| a.len() == count)
    };
    let served = served_when(&discovery, "the candidate's new source answered", candidate_has("fresh", 1)).await;
    let tried = served[&sidecar].candidate.clone().unwrap();
    assert!(Arc::ptr_eq(&tried.bundle, &candidate));
    assert_eq!(addresses_of(&tried, "backend").unwrap(), ["10.0.0.1"], "the source it shares with the stored bundle");
    assert!(tried.discovered.as_ref().unwrap().eds_version.starts_with("v2+cloudmap.6."), "{:?}", tried.discovered);
    assert_eq!(addresses(&served, &sidecar, "fresh"), None, "the stored bundle is served as before");
    assert!(served[&sidecar].discovered.as_ref().unwrap().eds_version.starts_with("v1+cloudmap.1."));

    // It follows Cloud Map like any source.
    fake.set("fresh", Ok(found(6, &["10.0.5.1", "10.0.5.2"])));
    served_when(&discovery, "the candidate's source moved", candidate_has("fresh", 2)).await;

    // Given up (halted, abandoned): no candidate, not polled.
    discovery.set_candidate(&sidecar, None);
    served_when(&discovery, "no candidate", |s| s[&sidecar].candidate.is_none()).await;
    assert!(!polled("fresh"));

    // Stored (promoted): the bundle has the source, and the candidate is done.
    discovery.set_candidate(&sidecar, Some(candidate.clone()));
    served_when(&discovery, "the candidate's source answered again", candidate_has("fresh", 2)).await;
    store.put(sidecar.clone(), (*candidate).clone(), IfMatch::Any).await.unwrap();
    let served = served_when(&discovery, "the stored candidate served to all", |s| s[&sidecar].candidate.is_none() && addresses(s, &sidecar, "fresh").is_some()).await;
    assert_eq!(addresses(&served, &sidecar, "fresh").unwrap().len(), 2);
    assert!(discovery.lock().candidates.is_empty());
}

#[tokio::test]
async fn a_candidate_source_that_never_answered_is_named_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let fake = Arc::new(Fake::default());
    fake.set("backend", Ok(found(1, &["10.0.0.1"])));
    store.put(node_type("sidecar"), bundle("v1", &["backend"]), IfMatch::Any).await.unwrap();
    let discovery = start(&store, &fake).await;
    let sidecar = node_type("sidecar");
    assert!(discovery.candidate_unanswered(&sidecar).is_empty(), "no candidate");

    discovery.set_candidate(&sidecar, Some(Arc::new(bundle("v2", &["backend", "typo"]))));
    until("the missing service's poll failed", || discovery.candidate_unanswered(&sidecar).iter().any(|s| s.contains("ServiceNotFound"))).await;
    assert_eq!(discovery.candidate_unanswered(&sidecar), ["cluster typo (Cloud Map prod.local/typo): ServiceNotFound: typo"], "the shared source answered");

    // Once it answers (even with no instances), it is no longer in the way.
    fake.set("typo", Ok(found(1, &[])));
    until("the service answered", || discovery.candidate_unanswered(&sidecar).is_empty()).await;
}
