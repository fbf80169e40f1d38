//! The delta (incremental) stream state machine. Pure logic, like the
//! state-of-the-world one in [`super::stream`], and driven by the same I/O
//! loop.
//!
//! Each resource has its own version, its digest in hex (R29): a response
//! carries only the resources the client lacks or holds at another version,
//! and names it must drop in `removed_resources`. Per type a stream keeps
//! its subscription (explicit names, and whether it is a wildcard one) and
//! the snapshot its view matches: after each response the client holds,
//! for every subscribed name, exactly what that snapshot has (the name's
//! resource, or nothing). The next snapshot is then compared with it, and
//! when it is the snapshot's direct successor, only the names it changed or
//! dropped are looked at.
//!
//! - A request is never dropped for a stale nonce: its subscription changes
//!   count (R28). Only a request naming the type's latest nonce is an ACK,
//!   or a NACK when it carries `error_detail` (R27); a NACKed version is
//!   not sent again, only a later change is (no resend loop).
//! - A newly subscribed name is answered even if the client may hold it
//!   (R30): with the resource, or in `removed_resources` when the bundle has
//!   no such resource (R32), and sent once it appears. Unsubscribing a name
//!   the client never had changes nothing (R31).
//! - The first request's `initial_resource_versions` say what a
//!   reconnecting client holds (R33): what it holds at the current version
//!   is not sent again, and what is gone is removed.
//! - An empty first subscription to LDS or CDS is the legacy wildcard;
//!   `*` subscribes to every resource of any type, and unsubscribing `*`
//!   ends that.
//! - On ADS the order of the state-of-the-world streams holds (R23):
//!   listeners and routes wait while clusters or endpoints are unanswered,
//!   and clusters and endpoints that a new bundle drops are removed only
//!   once every other type is answered (make before break).
//! - On ADS a response that updates clusters (listeners) is followed by
//!   what they refer to, changed or not: Envoy warms them until it arrives
//!   (R21, R22), and asks for nothing when the names are already
//!   subscribed.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
};

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::{
    names::Names,
    stream::{Received, StreamKind},
    vhds::{self, Resolved},
};
use crate::{
    cache::{Resource, Snapshot},
    resource_type::{Empty, ResourceType, Sparse},
    wire::{self, delta_discovery_response as field, resource as resource_field, EncodedResponse},
};

/// The version a delta stream reports for a resource: its digest in hex.
pub fn resource_version(digest: u64) -> String {
    format!("{digest:016x}")
}

#[derive(Debug, Default)]
struct TypeState {
    /// A request for the type has been seen.
    requested: bool,
    /// Subscribed to every resource of the type.
    wildcard: bool,
    /// Explicitly subscribed names.
    names: Names,
    /// Names subscribed since the last response: answered whatever the
    /// client may hold (R30, R32).
    newly_named: Names,
    /// `*` was subscribed since the last response: every resource not
    /// named before is new to the client.
    widened: bool,
    /// What the first request said the client holds (R33), until the first
    /// response is worked out.
    initial: Option<HashMap<String, String>>,
    /// The snapshot the client's view of every subscribed name matches;
    /// `None` before the first response is worked out.
    synced: Option<Arc<Snapshot>>,
    /// On ADS, clusters or endpoints a new bundle dropped that the client
    /// keeps until every other type is answered (R23).
    retiring: Vec<Arc<str>>,
    /// Nonce of the last response; empty before the first.
    nonce: String,
    /// The last response has not been ACKed or NACKed yet.
    awaiting_reply: bool,
    /// On ADS, what the next response sends again though the client holds
    /// it: the fresh answer that clusters (listeners) of a CDS (LDS)
    /// response just sent warm on (R21, R22). Envoy asks for nothing over
    /// delta when a modified cluster takes the endpoints it already
    /// subscribes to, and waits for them until its init fetch timeout.
    rewarm: Option<Rewarm>,
}

/// What a parent's response that started resources warming asks to send.
#[derive(Debug, Clone)]
enum Rewarm {
    /// What the changes of this snapshot refer to (weak: a stream must not
    /// keep old bundles alive).
    Changes(Weak<Snapshot>),
    /// Every subscribed resource: no list of changes says which.
    All,
}

impl Empty for TypeState {
    fn empty() -> &'static Self {
        static EMPTY: std::sync::LazyLock<TypeState> = std::sync::LazyLock::new(TypeState::default);
        &EMPTY
    }
}

impl TypeState {
    fn subscribes(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// The names of `sorted` (a snapshot's list, in name order) this
    /// subscription takes.
    fn subscribed_of<'a>(&'a self, sorted: &'a [Arc<str>]) -> Vec<&'a Arc<str>> {
        if self.wildcard {
            sorted.iter().collect()
        } else {
            self.names.common(sorted)
        }
    }
}

/// Per-stream delta protocol state.
#[derive(Debug)]
pub struct DeltaState {
    kind: StreamKind,
    types: Sparse<TypeState>,
    nonces: u64,
    /// Types whose first answer was nothing at all: the client reconnected
    /// holding all of it (R33). Reported so the status shows the version.
    in_sync: Vec<ResourceType>,
}

/// What one response of a type carries.
#[derive(Default)]
struct Diff<'a> {
    updated: Vec<&'a Resource>,
    removed: Vec<Arc<str>>,
    /// On-demand types: what subscribed names resolved to, under those
    /// names as aliases.
    aliased: Vec<Aliased<'a>>,
    /// A response is due even if it carries nothing (a VHDS namespace
    /// subscription).
    answer_anyway: bool,
}

/// An entry sent under the names it was subscribed by: a resource, or
/// (`None`) word that nothing serves them.
pub struct Aliased<'a> {
    pub resource: Option<&'a Resource>,
    pub aliases: Vec<Arc<str>>,
}

impl Diff<'_> {
    fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty() && self.aliased.is_empty() && !self.answer_anyway
    }
}

impl DeltaState {
    pub fn new(kind: StreamKind) -> Self {
        Self { kind, types: Default::default(), nonces: 0, in_sync: Vec::new() }
    }

    /// Takes in one request: subscription changes, then ACK/NACK bookkeeping.
    pub fn on_request<'a>(&mut self, request: &'a DeltaDiscoveryRequest, snapshot: Option<&Snapshot>) -> Received<'a> {
        let Some(ty) = self.kind.type_of(&request.type_url) else {
            return Received::Unknown { type_url: &request.type_url };
        };
        let state = &mut self.types[ty];
        let first = !state.requested;
        state.requested = true;
        let changed = subscribe(ty, state, request, first, snapshot);
        if first {
            state.initial = Some(request.initial_resource_versions.clone());
        }
        let nonce = request.response_nonce.as_str();
        if !nonce.is_empty() && nonce == state.nonce && state.awaiting_reply {
            state.awaiting_reply = false;
            return match &request.error_detail {
                Some(error) => Received::Nack { ty, nonce, error: &error.message },
                None => Received::Ack { ty, version: None },
            };
        }
        match (first || changed, nonce.is_empty() || nonce == state.nonce) {
            (true, _) => Received::Request { ty },
            // R28: its subscription changes were taken in all the same.
            (false, false) => Received::Stale { ty },
            (false, true) => Received::Repeat { ty },
        }
    }

    /// The responses due now, in ADS order, given the node type's snapshot.
    pub fn due(&mut self, snapshot: &Arc<Snapshot>) -> Vec<(ResourceType, EncodedResponse)> {
        let mut responses = Vec::new();
        for ty in ResourceType::ALL {
            if self.kind == StreamKind::Aggregated && self.any_unanswered(ty.info().waits_for) {
                continue;
            }
            let state = &self.types[ty];
            if !state.requested || state.awaiting_reply {
                continue;
            }
            let mut diff = if ty.info().on_demand { on_demand_diff(ty, state, snapshot) } else { diff(ty, state, snapshot) };
            // The snapshot's own list of changes told what this response
            // updates, and so tells what those resources refer to.
            let from_changes = state.initial.is_none()
                && !state.widened
                && state.newly_named.is_empty()
                && state.synced.as_ref().is_some_and(|synced| snapshot.replaced(synced));
            let retire = self.retires(ty);
            if self.kind == StreamKind::Aggregated && !diff.updated.is_empty() {
                self.rewarm_warmed_by(ty, from_changes.then_some(snapshot));
            }
            let state = &mut self.types[ty];
            let first = state.initial.is_some();
            state.retiring.retain(|name| !diff.updated.iter().any(|r| r.name() == name));
            if retire {
                for name in diff.removed.drain(..) {
                    if !state.retiring.contains(&name) {
                        state.retiring.push(name);
                    }
                }
            }
            state.synced = Some(snapshot.clone());
            state.newly_named = Names::default();
            state.widened = false;
            state.initial = None;
            state.rewarm = None;
            if diff.is_empty() {
                if first {
                    self.in_sync.push(ty);
                }
                continue;
            }
            let response = self.respond(ty, snapshot, &diff);
            responses.push((ty, response));
        }
        // Everything else is answered: drop what was kept for make before break.
        for ty in ResourceType::ALL {
            if self.types[ty].retiring.is_empty() || self.any_unanswered(&ResourceType::ALL) {
                continue;
            }
            let removed = std::mem::take(&mut self.types[ty].retiring);
            let response = self.respond(ty, snapshot, &Diff { removed, ..Diff::default() });
            responses.push((ty, response));
        }
        responses
    }

    /// The types found in sync with no response since the last call.
    pub fn take_in_sync(&mut self) -> Vec<ResourceType> {
        std::mem::take(&mut self.in_sync)
    }

    fn any_unanswered(&self, types: &[ResourceType]) -> bool {
        types.iter().any(|t| self.types[*t].awaiting_reply)
    }

    /// A response of `parent` updated resources, which Envoy warms until a
    /// fresh answer for what they refer to arrives (R21, R22): owed by the
    /// types `parent` warms, in this `due` if they come later in ADS order
    /// and are not awaiting a reply. `changes` is the snapshot whose list of
    /// changes tells what the updated resources refer to, if one does.
    fn rewarm_warmed_by(&mut self, parent: ResourceType, changes: Option<&Arc<Snapshot>>) {
        for ty in ResourceType::ALL {
            let state = &self.types[ty];
            if !ty.info().warmed_by.contains(&parent) || !state.requested || ty.info().on_demand {
                continue;
            }
            let rewarm = match (changes, &state.rewarm) {
                (Some(snapshot), None) => Rewarm::Changes(Arc::downgrade(snapshot)),
                (Some(snapshot), Some(Rewarm::Changes(owed))) if snapshot.is(owed) => continue,
                _ => Rewarm::All,
            };
            self.types[ty].rewarm = Some(rewarm);
        }
    }

    /// On ADS, whether what a new bundle drops of `ty` waits until the
    /// types that may still use it are answered: clusters and endpoints,
    /// while the stream has listeners or routes.
    fn retires(&self, ty: ResourceType) -> bool {
        self.kind == StreamKind::Aggregated
            && ResourceType::ALL.iter().any(|t| t.info().waits_for.contains(&ty) && self.types[*t].requested)
    }

    fn respond(&mut self, ty: ResourceType, snapshot: &Snapshot, diff: &Diff<'_>) -> EncodedResponse {
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let response = frame(snapshot, ty, &diff.updated, &diff.aliased, &diff.removed, &nonce);
        let state = &mut self.types[ty];
        state.nonce = nonce;
        state.awaiting_reply = true;
        response
    }
}

/// Applies a request's subscription changes; `true` if any.
fn subscribe(ty: ResourceType, state: &mut TypeState, request: &DeltaDiscoveryRequest, first: bool, snapshot: Option<&Snapshot>) -> bool {
    let (subscribe, unsubscribe) = (&request.resource_names_subscribe, &request.resource_names_unsubscribe);
    if subscribe.is_empty() && unsubscribe.is_empty() {
        // The legacy wildcard: LDS and CDS clients that name nothing.
        if first && ty.is_full_state() {
            state.wildcard = true;
        }
        return false;
    }
    let shared = |name: &String| snapshot.and_then(|s| s.shared_name(ty, name)).unwrap_or_else(|| Arc::from(name.as_str()));
    let mut names: Vec<Arc<str>> = state.names.shared_names().cloned().collect();
    let mut newly: Vec<Arc<str>> = state.newly_named.shared_names().cloned().collect();
    for name in subscribe {
        if name == "*" {
            state.widened |= !state.wildcard;
            state.wildcard = true;
        } else {
            let name = shared(name);
            names.push(name.clone());
            newly.push(name);
        }
    }
    for name in unsubscribe {
        if name == "*" {
            state.wildcard = false;
        } else {
            names.retain(|n| **n != **name);
            newly.retain(|n| **n != **name);
            state.retiring.retain(|n| **n != **name);
        }
    }
    state.names = Names::new(names.into_iter());
    state.newly_named = Names::new(newly.into_iter());
    true
}

/// What a response of `ty` must carry for the client's view to match
/// `snapshot`.
fn diff<'a>(ty: ResourceType, state: &TypeState, snapshot: &'a Snapshot) -> Diff<'a> {
    let mut diff = Diff::default();
    match (&state.initial, &state.synced) {
        // R33: the first response, from what the client says it holds.
        (Some(held), _) => {
            let holds_current = |r: &Resource| held.get(&**r.name()).is_some_and(|v| *v == resource_version(r.digest()));
            diff.updated = subscribed(ty, state, snapshot, |r| !holds_current(r));
            let gone = held.keys().filter(|name| state.subscribes(name) && !snapshot.contains(ty, name));
            diff.removed = gone.map(|name| Arc::from(name.as_str())).collect();
        }
        // The client's view already matches this very snapshot (the ACK of
        // the response just sent, say): only new subscriptions can be due.
        (None, Some(synced)) if std::ptr::eq(&**synced, snapshot) => {}
        (None, synced) => {
            let synced = synced.as_deref();
            match synced.and_then(|s| Some((snapshot.changed_since(s, ty)?, snapshot.removed_since(s, ty)?))) {
                // The common case: the snapshot's own list of changes decides.
                Some((changed, gone)) => {
                    diff.updated = snapshot.resources_named(ty, state.subscribed_of(changed));
                    diff.removed = gone.iter().filter(|name| state.subscribes(name)).cloned().collect();
                }
                None => {
                    let held = |name: &str| synced.and_then(|s| s.digest(ty, name));
                    diff.updated = subscribed(ty, state, snapshot, |r| held(r.name()) != Some(r.digest()));
                    if let Some(synced) = synced {
                        let gone = synced.resources(ty).iter().map(Resource::name).filter(|name| state.subscribes(name) && !snapshot.contains(ty, name));
                        diff.removed = gone.cloned().collect();
                    }
                }
            }
        }
    }
    // R30, R32: every new subscription gets an answer, but what the first
    // request says the client holds at the current version stays (R33).
    let first = state.initial.is_some();
    if state.widened && !first {
        let unnamed = snapshot.resources(ty).iter().filter(|r| !state.names.contains(r.name()));
        let unnamed: Vec<&Resource> = unnamed.filter(|r| !diff.updated.iter().any(|u| u.name() == r.name())).collect();
        diff.updated.extend(unnamed);
        diff.updated.sort_by(|a, b| a.name().cmp(b.name()));
    }
    for name in state.newly_named.shared_names() {
        match snapshot.resource(ty, name) {
            Some(resource) if !first && !diff.updated.iter().any(|r| r.name() == name) => diff.updated.push(resource),
            None if !diff.removed.contains(name) => diff.removed.push(name.clone()),
            _ => {}
        }
    }
    if let Some(rewarm) = &state.rewarm {
        let listed = match rewarm {
            Rewarm::Changes(owed) if snapshot.is(owed) => snapshot.rewarmed(ty),
            _ => None,
        };
        let merge = !diff.updated.is_empty();
        match listed {
            Some(names) => diff.updated.extend(snapshot.resources_named(ty, state.subscribed_of(names))),
            None => diff.updated.extend(subscribed(ty, state, snapshot, |_| true)),
        }
        // Alone, the rewarmed resources are in order already.
        if merge {
            diff.updated.sort_by(|a, b| a.name().cmp(b.name()));
            diff.updated.dedup_by(|a, b| std::ptr::eq(*a, *b));
        }
    }
    diff
}

/// What a response of an on-demand type (VHDS) must carry: each subscribed
/// name resolved in `snapshot` against what it resolved to in the snapshot
/// the client's view matches (or, newly subscribed, answered anyway).
fn on_demand_diff<'a>(ty: ResourceType, state: &TypeState, snapshot: &'a Snapshot) -> Diff<'a> {
    let mut diff = Diff::default();
    // Envoy's first VHDS request names nothing: its route configuration is
    // the namespace, and waits for a first answer in it. Each route
    // configuration that fetches virtual hosts gets a removal in its
    // namespace (Envoy refuses an entry without a resource): the answer,
    // with nothing loaded yet.
    if state.initial.is_some() && state.names.is_empty() {
        diff.removed = vhds::namespaces(snapshot);
        diff.answer_anyway = true;
    }
    let synced = state.synced.as_deref().filter(|_| state.initial.is_none());
    for name in state.names.shared_names() {
        let before = synced.filter(|_| !state.newly_named.contains(name)).map(|synced| vhds::resolve(synced, name));
        match (vhds::resolve(snapshot, name), before) {
            (Resolved::Namespace, Some(Resolved::Namespace)) | (Resolved::Missing, Some(Resolved::Missing)) => {}
            (Resolved::Host(now), Some(Resolved::Host(then))) if now.name() == then.name() && now.digest() == then.digest() => {}
            (Resolved::Namespace, _) => diff.answer_anyway = true,
            (Resolved::Missing, Some(Resolved::Host(gone))) if !snapshot.contains(ty, gone.name()) => diff.removed.push(gone.name().clone()),
            (Resolved::Host(resource), _) => match diff.aliased.iter_mut().find(|a| a.resource.is_some_and(|r| r.name() == resource.name())) {
                Some(entry) => entry.aliases.push(name.clone()),
                None => diff.aliased.push(Aliased { resource: Some(resource), aliases: vec![name.clone()] }),
            },
            // Envoy resumes a request paused on a host only on an entry
            // aliased by it: one without a resource says no virtual host
            // serves it (Envoy answers 404).
            (Resolved::Missing, _) => diff.aliased.push(Aliased { resource: None, aliases: vec![name.clone()] }),
        }
    }
    diff
}

/// Every resource of `ty` in `snapshot` that the subscription names, kept
/// when `keep` says so.
fn subscribed<'a>(ty: ResourceType, state: &TypeState, snapshot: &'a Snapshot, keep: impl Fn(&Resource) -> bool) -> Vec<&'a Resource> {
    if state.wildcard {
        snapshot.resources(ty).iter().filter(|r| keep(r)).collect()
    } else {
        let mut named = snapshot.resources_named(ty, state.names.shared_names());
        named.retain(|r| keep(r));
        named
    }
}

/// A DeltaDiscoveryResponse of `ty`: `updated` resources from `snapshot`
/// (each its name, version and the snapshot's shared `Any` entry), the
/// `aliased` ones with their aliases, and the names in `removed`.
pub fn frame(snapshot: &Snapshot, ty: ResourceType, updated: &[&Resource], aliased: &[Aliased<'_>], removed: &[Arc<str>], nonce: &str) -> EncodedResponse {
    let (version, type_url) = (snapshot.type_version(ty).as_bytes(), ty.type_url().as_bytes());
    let mut head = BytesMut::with_capacity(version.len() + type_url.len() + nonce.len() + 12);
    wire::put_bytes_field(&mut head, field::SYSTEM_VERSION_INFO, version);
    wire::put_bytes_field(&mut head, field::TYPE_URL, type_url);
    wire::put_bytes_field(&mut head, field::NONCE, nonce.as_bytes());
    removed.iter().for_each(|name| put_string(&mut head, field::REMOVED_RESOURCES, name));
    let mut response = EncodedResponse::default();
    response.push_encoded(head.freeze());
    let all = snapshot.resources(ty);
    let updated = if updated.len() == all.len() && updated.iter().zip(all).all(|(a, b)| std::ptr::eq(*a, b)) {
        // The whole set, in order: framed once per snapshot and shared.
        response.push_encoded(snapshot.delta_set(ty, whole_set).clone());
        &[][..]
    } else {
        updated
    };
    let entries = updated.iter().map(|r| (r.name(), Some(*r), &[][..])).chain(aliased.iter().map(|a| (a.resource.map_or(&a.aliases[0], |r| r.name()), a.resource, &a.aliases[..])));
    for (name, resource, aliases) in entries {
        response.push_encoded(resource_head(name, resource, aliases));
        if let Some(resource) = resource {
            response.push_encoded(resource.entry().clone());
        }
    }
    response
}

/// Every resource of a type as delta `Resource` entries, in one chunk.
fn whole_set(resources: &[Resource]) -> Bytes {
    let mut chunk = BytesMut::with_capacity(resources.iter().map(|r| r.entry().len() + r.name().len() + 32).sum());
    for resource in resources {
        chunk.put_slice(&resource_head(resource.name(), Some(resource), &[]));
        chunk.put_slice(resource.entry());
    }
    chunk.freeze()
}

/// A `Resource` entry of a delta response up to its `Any`: the field head,
/// the name, aliases and version. The `Any` field of `resource`, shared,
/// follows.
fn resource_head(name: &str, resource: Option<&Resource>, aliases: &[Arc<str>]) -> Bytes {
    let version = resource.map(|r| resource_version(r.digest())).unwrap_or_default();
    let head_len = wire::field_len(resource_field::NAME, name.len())
        + aliases.iter().map(|a| wire::field_len(resource_field::ALIASES, a.len())).sum::<usize>()
        + if version.is_empty() { 0 } else { wire::field_len(resource_field::VERSION, version.len()) };
    let mut head = BytesMut::with_capacity(head_len + 6);
    wire::put_field_head(&mut head, field::RESOURCES, head_len + resource.map_or(0, |r| r.entry().len()));
    // A name is never empty once validated; written even if it were.
    put_string(&mut head, resource_field::NAME, name);
    aliases.iter().for_each(|alias| put_string(&mut head, resource_field::ALIASES, alias));
    wire::put_bytes_field(&mut head, resource_field::VERSION, version.as_bytes());
    head.freeze()
}

/// A repeated string field, written even when empty.
fn put_string(buf: &mut BytesMut, tag: u32, value: &str) {
    wire::put_field_head(buf, tag, value.len());
    buf.put_slice(value.as_bytes());
}

#[cfg(test)]
mod tests;
