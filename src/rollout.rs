//! Canary rollouts: `PUT /resources/{node_type}?canary=<glob>&wait=30s`.
//!
//! The new bundle is served first only to the connected streams whose node
//! id matches the glob (the cache serves them a canary snapshot beside the
//! node type's own). Once every canary has ACKed every changed type, the
//! bundle is stored like any PUT and so served to all. A NACK from any
//! canary, a canary that neither ACKs nor NACKs within `wait`, or an
//! endpoint source of the bundle that has not answered by then (its
//! clusters' endpoints are unknown, so no canary tried them), halts the
//! rollout instead: the canaries get the previous config back, under a new
//! version (`<previous>-halted-<id>`), and nobody else ever sees the new
//! one. A halted rollout is retried or abandoned; until then writes to the
//! node type get 409.
//!
//! A rollout is kept in the store as it moves, with the bundle it tries: a
//! restart mid-rollout reports it halted (interrupted), never promotes it.
//! It runs on the replica that took the PUT: with replicas on etcd, its
//! canaries must be connected to that replica.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    cache::{glob_match, Cache, Canary, CanaryServe},
    discovery::Discovery,
    node_type::NodeType,
    resource_type::ResourceType,
    schema::StoredBundle,
    store::{Aux, IfMatch, Store, StoreError},
    xds::status::{now_ms, Registry, StreamStatus},
};

/// How often a running rollout looks at its canaries' ACKs.
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// One rollout, as `GET /resources/{node_type}/rollout` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub node_type: String,
    /// When it started (ms since the epoch): unique per node type.
    pub id: u64,
    /// The node ids served first.
    pub canary: String,
    pub wait_ms: u64,
    /// The version being rolled out, and the one served before it.
    pub version: String,
    pub previous_version: String,
    pub state: State,
    /// The canaries' node ids when it (last) started; every one must ACK.
    pub canaries: Vec<String>,
    /// The canaries that have ACKed every changed type.
    pub acked: Vec<String>,
    /// Why it halted: the Envoy's error, or who did not answer.
    pub error: Option<String>,
    /// The version the canaries were given back when it halted.
    pub halted_version: Option<String>,
    pub started_at_unix_ms: u64,
    pub ended_at_unix_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Served to the canaries, waiting for their ACKs.
    Running,
    /// Every canary ACKed: stored and served to all.
    Promoted,
    /// Stopped by a NACK, a timeout or a restart: the canaries are back on
    /// the previous config.
    Halted,
    /// Given up after a halt (or while running): the canaries are served
    /// the node type's bundle again.
    Abandoned,
}

impl Rollout {
    /// Whether it still holds the node type: writes get 409.
    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Running | State::Halted)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("a canary rollout of {node_type} to version {version:?} is {state}; GET /resources/{node_type}/rollout, then retry (POST …/rollout/retry) or abandon it (DELETE …/rollout)", state = match .state { State::Running => "running", _ => "halted" })]
    Active { node_type: String, version: String, state: State },
    #[error("no connected stream of {node_type} has a node id matching {glob:?}: a canary rollout needs at least one canary")]
    NoCanaries { node_type: String, glob: String },
    #[error("{0}")]
    Refused(String),
    #[error("{node_type} has no rollout")]
    NotFound { node_type: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every node type's rollout (the last one of each). Cheap to clone.
#[derive(Clone)]
pub struct Rollouts(Arc<Inner>);

struct Inner {
    store: Store,
    cache: Cache,
    /// Polls a candidate's endpoint sources for its canaries.
    discovery: Option<Discovery>,
    registry: Registry,
    shutdown: CancellationToken,
    rollouts: Mutex<HashMap<NodeType, Arc<Running>>>,
}

/// A rollout and the bundle it tries.
struct Running {
    rollout: Mutex<Rollout>,
    bundle: Arc<StoredBundle>,
}

impl Rollouts {
    /// None yet, on `cache` and `registry`.
    pub fn new(store: Store, cache: Cache, discovery: Option<Discovery>, registry: Registry, shutdown: CancellationToken) -> Self {
        Self(Arc::new(Inner { store, cache, discovery, registry, shutdown, rollouts: Mutex::new(HashMap::new()) }))
    }

    /// Loads the stored rollouts. One that was running when sxds stopped is
    /// reported halted: nobody saw it finish, so it is not promoted.
    pub async fn load(store: Store, cache: Cache, discovery: Option<Discovery>, registry: Registry, shutdown: CancellationToken) -> Result<Self, StoreError> {
        let bundles: HashMap<String, Vec<u8>> = store.aux(Aux::RolloutBundles).await?.into_iter().collect();
        let rollouts = Self::new(store.clone(), cache, discovery, registry, shutdown);
        for (key, value) in store.aux(Aux::Rollouts).await? {
            let (Ok(mut rollout), Ok(node_type)) = (serde_json::from_slice::<Rollout>(&value), NodeType::parse(&key)) else {
                tracing::warn!(key, "a stored rollout does not read; it is ignored");
                continue;
            };
            let bundle = bundles.get(&key).and_then(|b| prost::Message::decode(b.as_slice()).ok()).map(Arc::new);
            let Some(bundle) = bundle else {
                tracing::warn!(%node_type, "a stored rollout has no bundle; it is ignored");
                continue;
            };
            if rollout.state == State::Running {
                tracing::warn!(%node_type, version = rollout.version, "sxds restarted during a canary rollout: it is halted, not promoted; retry or abandon it");
                rollout.state = State::Halted;
                rollout.error = Some("sxds restarted during the rollout".into());
                rollout.ended_at_unix_ms = Some(now_ms() as u64);
            }
            let running = Arc::new(Running { rollout: Mutex::new(rollout.clone()), bundle });
            rollouts.lock().insert(node_type.clone(), running);
            if rollout.state == State::Halted {
                rollouts.halt(&node_type, &rollout, None).await;
            }
        }
        Ok(rollouts)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<NodeType, Arc<Running>>> {
        self.0.rollouts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last rollout of `node_type`.
    pub fn get(&self, node_type: &NodeType) -> Option<Rollout> {
        rollout_of(self, node_type)
    }

    /// Refuses a write to `node_type` while a rollout holds it.
    pub fn check_idle(&self, node_type: &NodeType) -> Result<(), RolloutError> {
        match self.get(node_type) {
            Some(rollout) if rollout.is_active() => Err(RolloutError::Active { node_type: rollout.node_type, version: rollout.version, state: rollout.state }),
            _ => Ok(()),
        }
    }

    /// Starts rolling `bundle` out to the streams of `node_type` whose node
    /// id matches `glob`.
    pub async fn start(&self, node_type: &NodeType, glob: &str, wait: Duration, bundle: StoredBundle) -> Result<Rollout, RolloutError> {
        self.check_idle(node_type)?;
        let Some(stable) = self.0.store.catalog().get(node_type).cloned() else {
            return Err(RolloutError::Refused(format!("{node_type} has no bundle yet: a canary rollout needs one to fall back to; PUT it without ?canary")));
        };
        if stable.version == bundle.version {
            return Err(RolloutError::Refused(format!("version {:?} is already stored for {node_type}: a canary rollout needs a new version", bundle.version)));
        }
        let canaries = self.canaries(node_type, glob);
        if canaries.is_empty() {
            return Err(RolloutError::NoCanaries { node_type: node_type.to_string(), glob: glob.to_owned() });
        }
        let now = now_ms() as u64;
        let rollout = Rollout {
            node_type: node_type.to_string(),
            id: now,
            canary: glob.to_owned(),
            wait_ms: wait.as_millis() as u64,
            version: bundle.version.clone(),
            previous_version: stable.version.clone(),
            state: State::Running,
            canaries,
            acked: Vec::new(),
            error: None,
            halted_version: None,
            started_at_unix_ms: now,
            ended_at_unix_ms: None,
        };
        let bundle = Arc::new(bundle);
        self.0.store.save_aux(Aux::RolloutBundles, node_type.to_string(), Some(prost::Message::encode_to_vec(&*bundle))).await?;
        self.save(&rollout).await?;
        self.lock().insert(node_type.clone(), Arc::new(Running { rollout: Mutex::new(rollout.clone()), bundle: bundle.clone() }));
        self.run(node_type, &rollout, bundle);
        Ok(rollout)
    }

    /// Starts a halted rollout again, with the canaries connected now.
    pub async fn retry(&self, node_type: &NodeType, wait: Option<Duration>) -> Result<Rollout, RolloutError> {
        let running = self.lock().get(node_type).cloned().ok_or_else(|| RolloutError::NotFound { node_type: node_type.to_string() })?;
        let mut rollout = lock(&running.rollout).clone();
        if rollout.state != State::Halted {
            return Err(RolloutError::Refused(format!("the rollout of {node_type} is not halted; only a halted rollout can be retried")));
        }
        rollout.canaries = self.canaries(node_type, &rollout.canary);
        if rollout.canaries.is_empty() {
            return Err(RolloutError::NoCanaries { node_type: node_type.to_string(), glob: rollout.canary });
        }
        let now = now_ms() as u64;
        (rollout.state, rollout.acked, rollout.error, rollout.halted_version, rollout.ended_at_unix_ms) = (State::Running, Vec::new(), None, None, None);
        (rollout.id, rollout.started_at_unix_ms) = (now, now);
        if let Some(wait) = wait {
            rollout.wait_ms = wait.as_millis() as u64;
        }
        self.save(&rollout).await?;
        *lock(&running.rollout) = rollout.clone();
        self.run(node_type, &rollout, running.bundle.clone());
        Ok(rollout)
    }

    /// Gives a rollout up: the canaries are served the node type's bundle.
    pub async fn abandon(&self, node_type: &NodeType) -> Result<Rollout, RolloutError> {
        let running = self.lock().get(node_type).cloned().ok_or_else(|| RolloutError::NotFound { node_type: node_type.to_string() })?;
        let mut rollout = lock(&running.rollout).clone();
        if !rollout.is_active() {
            return Err(RolloutError::Refused(format!("the rollout of {node_type} is already {:?}", rollout.state).to_lowercase()));
        }
        rollout.state = State::Abandoned;
        rollout.ended_at_unix_ms = Some(now_ms() as u64);
        self.save(&rollout).await?;
        *lock(&running.rollout) = rollout.clone();
        self.serve_canaries(node_type, None);
        tracing::info!(%node_type, version = rollout.version, "canary rollout abandoned; the canaries are served the stored bundle");
        Ok(rollout)
    }

    /// The node ids of the connected streams of `node_type` matching `glob`.
    fn canaries(&self, node_type: &NodeType, glob: &str) -> Vec<String> {
        let ids: BTreeSet<String> = self.canary_streams(node_type, glob).into_iter().map(|s| s.node_id).collect();
        ids.into_iter().collect()
    }

    /// The status of every connected stream of `node_type` matching `glob`:
    /// a check copies those, not all of the registry's.
    fn canary_streams(&self, node_type: &NodeType, glob: &str) -> Vec<StreamStatus> {
        self.0.registry.list_where(|ty, id| ty == node_type.as_str() && glob_match(glob, id))
    }

    async fn save(&self, rollout: &Rollout) -> Result<(), StoreError> {
        let json = serde_json::to_vec(rollout).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.0.store.save_aux(Aux::Rollouts, rollout.node_type.clone(), Some(json)).await
    }

    /// Serves `bundle` to the canaries and watches their answers.
    fn run(&self, node_type: &NodeType, rollout: &Rollout, bundle: Arc<StoredBundle>) {
        tracing::info!(%node_type, version = rollout.version, canary = rollout.canary, canaries = ?rollout.canaries, wait_ms = rollout.wait_ms, "canary rollout started");
        self.serve_canaries(node_type, Some(Canary { glob: rollout.canary.clone(), serve: CanaryServe::Candidate(bundle) }));
        tokio::spawn(self.clone().watch(node_type.clone(), rollout.id));
    }

    /// Until the rollout `id` of `node_type` ends: promotes it once every
    /// canary ACKed, halts it on a NACK or when its time is up.
    async fn watch(self, node_type: NodeType, id: u64) {
        let Some(running) = self.lock().get(&node_type).cloned() else { return };
        let (wait, canaries) = {
            let rollout = lock(&running.rollout);
            (Duration::from_millis(rollout.wait_ms), rollout.canaries.clone())
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                () = tokio::time::sleep(CHECK_EVERY) => {}
                () = self.0.shutdown.cancelled() => return,
            }
            let current = lock(&running.rollout).clone();
            if current.id != id || current.state != State::Running {
                return; // retried, abandoned
            }
            let verdict = self.verdict(&node_type, &current.canary, &canaries);
            match verdict {
                Verdict::Rejected(error) => return self.halt(&node_type, &current, Some(error)).await,
                Verdict::Waiting(acked) if tokio::time::Instant::now() >= deadline => {
                    let silent: Vec<&String> = canaries.iter().filter(|c| !acked.contains(c)).collect();
                    let error = format!("canaries {silent:?} neither ACKed nor NACKed version {:?} within {wait:?}", current.version);
                    return self.halt(&node_type, &current, Some(error)).await;
                }
                Verdict::Waiting(acked) => {
                    let mut rollout = lock(&running.rollout);
                    if rollout.id == id {
                        rollout.acked = acked;
                    }
                }
                Verdict::Acked => {
                    // What the canaries ACKed must include every new cluster's endpoints.
                    let unanswered = self.0.discovery.as_ref().map_or_else(Vec::new, |d| d.candidate_unanswered(&node_type));
                    if unanswered.is_empty() {
                        return self.promote(&node_type, &current, running.bundle.as_ref().clone()).await;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        let error = format!("endpoint sources of version {:?} never answered within {wait:?}: {}", current.version, unanswered.join("; "));
                        return self.halt(&node_type, &current, Some(error)).await;
                    }
                    let mut rollout = lock(&running.rollout);
                    if rollout.id == id {
                        rollout.acked = canaries.clone();
                    }
                }
            }
        }
    }

    /// What the canaries said about the canary snapshot so far.
    fn verdict(&self, node_type: &NodeType, glob: &str, canaries: &[String]) -> Verdict {
        let (Some(canary), Some(stable)) = (self.0.cache.canary(node_type), self.0.cache.stable(node_type)) else {
            return Verdict::Waiting(Vec::new());
        };
        let changed: Vec<ResourceType> = ResourceType::ALL.into_iter().filter(|&ty| canary.type_differs(&stable, ty)).collect();
        let streams = self.canary_streams(node_type, glob);
        // Any canary's NACK of the new version halts, even one that connected since.
        for stream in &streams {
            for ty in ResourceType::ALL {
                let Some(status) = &stream.types[ty] else { continue };
                let of_canary = status.sent_version.as_deref() == Some(&**canary.type_version(ty));
                if let (true, Some(rejection)) = (of_canary, &status.rejected) {
                    return Verdict::Rejected(format!("{} rejected {ty} version {:?}: {}", stream.node_id, &**canary.type_version(ty), rejection.error));
                }
            }
        }
        let acked_all = |stream: &StreamStatus| {
            // The types it subscribes that the rollout changes (all it subscribes when only the version changed).
            let held: Vec<ResourceType> = ResourceType::ALL.into_iter().filter(|&ty| stream.types[ty].is_some()).collect();
            let required: Vec<ResourceType> = if changed.is_empty() { held } else { held.into_iter().filter(|ty| changed.contains(ty)).collect() };
            required.iter().all(|&ty| stream.types[ty].as_ref().and_then(|s| s.acked_version.as_deref()) == Some(&**canary.type_version(ty)))
        };
        let acked: Vec<String> = canaries.iter().filter(|id| streams.iter().any(|s| &s.node_id == *id && acked_all(s))).cloned().collect();
        if acked.len() == canaries.len() {
            Verdict::Acked
        } else {
            Verdict::Waiting(acked)
        }
    }

    /// Stores the bundle, like any PUT: every stream gets it, and the cache
    /// drops the canary once it serves it.
    async fn promote(&self, node_type: &NodeType, rollout: &Rollout, bundle: StoredBundle) {
        match self.0.store.put(node_type.clone(), bundle, IfMatch::Version(rollout.previous_version.clone())).await {
            Ok(_) => {
                let mut done = rollout.clone();
                (done.state, done.acked, done.ended_at_unix_ms) = (State::Promoted, done.canaries.clone(), Some(now_ms() as u64));
                tracing::info!(%node_type, version = done.version, canaries = ?done.canaries, "canary rollout promoted: every canary ACKed; served to all");
                self.finish(node_type, done).await;
            }
            Err(error) => self.halt(node_type, rollout, Some(format!("the promoted bundle could not be stored: {error}"))).await,
        }
    }

    /// Halts the rollout: its canaries get the stored bundle back under a
    /// new version. `error` says why (`None`: already recorded).
    async fn halt(&self, node_type: &NodeType, rollout: &Rollout, error: Option<String>) {
        let mut halted = rollout.clone();
        halted.state = State::Halted;
        if let Some(error) = error {
            halted.error = Some(error);
        }
        halted.ended_at_unix_ms.get_or_insert(now_ms() as u64);
        let version = format!("{}-halted-{}", rollout.previous_version, rollout.id);
        halted.halted_version = Some(version.clone());
        tracing::warn!(%node_type, version = halted.version, error = halted.error.as_deref(), back_to = version, "canary rollout halted; the canaries are back on the previous config, nobody else saw the new one");
        self.serve_canaries(node_type, Some(Canary { glob: rollout.canary.clone(), serve: CanaryServe::Previous { version } }));
        self.finish(node_type, halted).await;
    }

    /// Serves `canary` to the matching streams (or, with `None`, no canary);
    /// a candidate's endpoint sources are polled while it is served. A
    /// promoted candidate needs no call: stored, it is the bundle.
    fn serve_canaries(&self, node_type: &NodeType, canary: Option<Canary>) {
        if let Some(discovery) = &self.0.discovery {
            let candidate = canary.as_ref().and_then(|canary| match &canary.serve {
                CanaryServe::Candidate(bundle) => Some(bundle.clone()),
                CanaryServe::Previous { .. } => None,
            });
            discovery.set_candidate(node_type, candidate);
        }
        self.0.cache.set_canary(node_type, canary);
    }

    async fn finish(&self, node_type: &NodeType, rollout: Rollout) {
        if let Err(error) = self.save(&rollout).await {
            tracing::error!(%node_type, %error, "cannot store the rollout's state; it is kept in memory");
        }
        if let Some(running) = self.lock().get(node_type) {
            *lock(&running.rollout) = rollout;
        }
    }
}

enum Verdict {
    /// A canary NACKed the new version.
    Rejected(String),
    /// Not every canary has ACKed yet; these have.
    Waiting(Vec<String>),
    Acked,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn rollout_of(rollouts: &Rollouts, node_type: &NodeType) -> Option<Rollout> {
    rollouts.lock().get(node_type).map(|running| lock(&running.rollout).clone())
}
