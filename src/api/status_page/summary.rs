//! The status page's question, answered in one pass over the streams: per
//! node type its bundle and how its Envoys stand, then the NACKing streams
//! (capped) and one page of streams, both filtered.
//!
//! The answer borrows from the stream list and the catalog: beyond the list
//! itself, the work allocates one entry per node type and one row per stream
//! shown, whatever the number of streams connected.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{bundle::Counts, xds::status::StreamStatus};

/// At most this many NACKing streams are listed (all are counted).
pub const NACKING_CAP: usize = 50;
pub const DEFAULT_PER_PAGE: usize = 50;
pub const MAX_PER_PAGE: usize = 500;

/// One stored bundle, as the summary needs it.
pub struct Bundle<'a> {
    pub node_type: &'a str,
    pub version: &'a str,
    pub counts: Counts,
}

/// Which streams the lists show. Node type counts ignore it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub node_type: Option<String>,
    /// A substring of the node id, ASCII case ignored.
    pub q: Option<String>,
    /// 1-based.
    pub page: usize,
    pub per_page: usize,
}

impl Default for Filter {
    fn default() -> Self {
        Self { node_type: None, q: None, page: 1, per_page: DEFAULT_PER_PAGE }
    }
}

impl Filter {
    fn matches(&self, stream: &StreamStatus) -> bool {
        self.node_type.as_ref().is_none_or(|t| *t == stream.node_type)
            && self.q.as_ref().is_none_or(|q| contains_ignore_ascii_case(&stream.node_id, q))
    }
}

/// Byte-wise, so it allocates nothing; a UTF-8 needle can only match whole
/// characters.
fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    needle.is_empty() || haystack.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Where one stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Every type sent to it is ACKed. Types keep their version when their
    /// resources do not change, so this (not "every type ACKed the bundle
    /// version") is what "has the current config" means.
    Acked,
    /// Something sent is not ACKed yet, or nothing was sent.
    Pending,
    /// Some type's last answer was a NACK (kept until a later ACK).
    Nacking,
}

pub fn state(stream: &StreamStatus) -> State {
    let mut types = stream.types.values().flatten().peekable();
    if types.peek().is_none() {
        return State::Pending;
    }
    let mut state = State::Acked;
    for ty in types {
        if ty.rejected.is_some() {
            return State::Nacking;
        }
        if ty.sent_version.is_none() || ty.sent_version != ty.acked_version {
            state = State::Pending;
        }
    }
    state
}

#[derive(Debug, Serialize)]
pub struct NodeTypeSummary<'a> {
    pub node_type: &'a str,
    /// `None`: Envoys of this node type are connected, but no bundle is stored.
    pub version: Option<&'a str>,
    pub resources: Option<Counts>,
    pub streams: usize,
    pub acked: usize,
    pub pending: usize,
    pub nacking: usize,
}

impl<'a> NodeTypeSummary<'a> {
    fn new(node_type: &'a str, version: Option<&'a str>, resources: Option<Counts>) -> Self {
        Self { node_type, version, resources, streams: 0, acked: 0, pending: 0, nacking: 0 }
    }

    fn count(&mut self, state: State) {
        self.streams += 1;
        match state {
            State::Acked => self.acked += 1,
            State::Pending => self.pending += 1,
            State::Nacking => self.nacking += 1,
        }
    }
}

/// A stream as `GET /nodes` shows it, with its state.
#[derive(Debug, Serialize)]
pub struct Row<'a> {
    #[serde(flatten)]
    pub stream: &'a StreamStatus,
    pub state: State,
}

#[derive(Debug, Serialize)]
pub struct Nacking<'a> {
    /// Every NACKing stream the filter matches.
    pub total: usize,
    /// The first [`NACKING_CAP`] of them, oldest stream first.
    pub items: Vec<Row<'a>>,
}

#[derive(Debug, Serialize)]
pub struct Page<'a> {
    /// Every stream the filter matches.
    pub total: usize,
    pub page: usize,
    pub per_page: usize,
    pub items: Vec<Row<'a>>,
}

#[derive(Debug, Serialize)]
pub struct Summary<'a> {
    /// Stored bundles and node types with streams, by name.
    pub node_types: Vec<NodeTypeSummary<'a>>,
    /// Every connected stream, filter or not.
    pub streams_connected: usize,
    pub nacking: Nacking<'a>,
    pub streams: Page<'a>,
}

/// Summarises `streams` (oldest first, as the registry lists them) against
/// the stored `bundles`.
pub fn summarize<'a>(bundles: impl IntoIterator<Item = Bundle<'a>>, streams: &'a [StreamStatus], filter: &Filter) -> Summary<'a> {
    let mut node_types: BTreeMap<&str, NodeTypeSummary<'a>> = bundles
        .into_iter()
        .map(|b| (b.node_type, NodeTypeSummary::new(b.node_type, Some(b.version), Some(b.counts))))
        .collect();
    let per_page = filter.per_page.clamp(1, MAX_PER_PAGE);
    let page = filter.page.max(1);
    let skip = (page - 1).saturating_mul(per_page);
    let mut nacking = Nacking { total: 0, items: Vec::new() };
    let mut shown = Page { total: 0, page, per_page, items: Vec::new() };

    for stream in streams {
        let state = state(stream);
        let node_type = stream.node_type.as_str();
        node_types.entry(node_type).or_insert_with(|| NodeTypeSummary::new(node_type, None, None)).count(state);
        if !filter.matches(stream) {
            continue;
        }
        if state == State::Nacking {
            nacking.total += 1;
            if nacking.items.len() < NACKING_CAP {
                nacking.items.push(Row { stream, state });
            }
        }
        if shown.total >= skip && shown.items.len() < per_page {
            shown.items.push(Row { stream, state });
        }
        shown.total += 1;
    }
    Summary { node_types: node_types.into_values().collect(), streams_connected: streams.len(), nacking, streams: shown }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::xds::status::{Rejection, TypeStatus};

    fn ty(sent: Option<&str>, acked: Option<&str>, nack: Option<&str>) -> Option<TypeStatus> {
        Some(TypeStatus {
            sent_version: sent.map(Arc::from),
            acked_version: acked.map(Arc::from),
            rejected: nack.map(|error| Box::new(Rejection { version: Some("2".into()), nonce: "7".into(), error: error.into(), at_unix_ms: 1 })),
            ..TypeStatus::default()
        })
    }

    fn stream(stream_id: u64, node_id: &str, types: [Option<TypeStatus>; 4]) -> StreamStatus {
        let types = crate::resource_type::PerType::from_fn(|ty| types.get(ty.index()).cloned().flatten().map(Box::new));
        let node_type = node_id.split('-').next().unwrap_or(node_id).to_owned();
        StreamStatus { stream_id, node_id: node_id.to_owned(), node_type, service: "ads", protocol: "sotw", connected_at_unix_ms: 1, types }
    }

    /// Stream `i` of 10,000: node types `sidecar` and `gateway` alternate;
    /// every 7th NACKs, every 5th other one waits for an ACK.
    fn fleet() -> Vec<StreamStatus> {
        (0..10_000u64)
            .map(|i| {
                let node_id = format!("{}-app{i}", if i % 2 == 0 { "sidecar" } else { "gateway" });
                let clusters = match (i % 7, i % 5) {
                    (0, _) => ty(Some("v2"), Some("v1"), Some(&format!("cluster {i}: bad config"))),
                    (_, 0) => ty(Some("v2"), Some("v1"), None),
                    _ => ty(Some("v2"), Some("v2"), None),
                };
                stream(i + 1, &node_id, [clusters, ty(Some("v1"), Some("v1"), None), None, None])
            })
            .collect()
    }

    fn counts(n: usize) -> Counts {
        Counts::from_fn(|_| n)
    }

    fn bundles() -> Vec<Bundle<'static>> {
        vec![
            Bundle { node_type: "sidecar", version: "v2", counts: counts(1) },
            Bundle { node_type: "idle", version: "v9", counts: counts(3) },
        ]
    }

    #[test]
    fn a_stream_is_nacking_if_any_type_nacked_pending_if_anything_is_unacked_else_acked() {
        let none = || [None, None, None, None];
        assert_eq!(state(&stream(1, "a", none())), State::Pending, "nothing sent yet");
        let acked = ty(Some("v2"), Some("v2"), None);
        let unacked = ty(Some("v3"), Some("v2"), None);
        let nacked = ty(Some("v3"), Some("v2"), Some("bad"));
        assert_eq!(state(&stream(1, "a", [acked.clone(), ty(Some("v1"), Some("v1"), None), None, None])), State::Acked);
        assert_eq!(state(&stream(1, "a", [acked.clone(), unacked.clone(), None, None])), State::Pending);
        assert_eq!(state(&stream(1, "a", [unacked, None, None, nacked])), State::Nacking, "a NACK outranks a pending type");
        assert_eq!(state(&stream(1, "a", [ty(None, Some("v1"), None), None, None, None])), State::Pending, "ACKed but never sent on this stream");
    }

    #[test]
    fn ten_thousand_streams_are_counted_per_node_type_and_answered_within_a_page() {
        let streams = fleet();
        let summary = summarize(bundles(), &streams, &Filter::default());

        assert_eq!(summary.streams_connected, 10_000);
        let names: Vec<&str> = summary.node_types.iter().map(|t| t.node_type).collect();
        assert_eq!(names, ["gateway", "idle", "sidecar"], "bundles and node types with streams, by name");
        for t in &summary.node_types {
            assert_eq!(t.acked + t.pending + t.nacking, t.streams, "{}: the states add up", t.node_type);
        }
        let (gateway, idle, sidecar) = (&summary.node_types[0], &summary.node_types[1], &summary.node_types[2]);
        assert_eq!((gateway.version, gateway.resources), (None, None), "streams but no bundle");
        assert_eq!((idle.version, idle.resources, idle.streams), (Some("v9"), Some(counts(3)), 0), "a bundle no Envoy has");
        assert_eq!((sidecar.version, sidecar.streams, gateway.streams), (Some("v2"), 5_000, 5_000));
        let expected = |parity: u64, state: State| {
            streams.iter().filter(|s| (s.stream_id - 1) % 2 == parity).filter(|s| super::state(s) == state).count()
        };
        assert_eq!((sidecar.acked, sidecar.pending, sidecar.nacking), (expected(0, State::Acked), expected(0, State::Pending), expected(0, State::Nacking)));
        assert_eq!(sidecar.nacking + gateway.nacking, 10_000usize.div_ceil(7), "every 7th stream NACKs");

        assert_eq!(summary.nacking.total, 10_000usize.div_ceil(7));
        assert_eq!(summary.nacking.items.len(), NACKING_CAP, "NACKing streams are capped");
        assert!(summary.nacking.items.iter().all(|r| r.state == State::Nacking && state(r.stream) == State::Nacking));
        assert_eq!(summary.nacking.items[0].stream.stream_id, 1, "oldest first");
        assert_eq!((summary.streams.total, summary.streams.page, summary.streams.per_page), (10_000, 1, DEFAULT_PER_PAGE));
        let ids: Vec<u64> = summary.streams.items.iter().map(|r| r.stream.stream_id).collect();
        assert_eq!(ids, (1..=50).collect::<Vec<_>>());

        let json = serde_json::to_value(&summary).expect("serializes");
        assert_eq!(json["streams"]["items"].as_array().map(Vec::len), Some(50));
        let first_nack = &json["nacking"]["items"][0];
        assert_eq!(first_nack["node_id"], "sidecar-app0");
        assert_eq!(first_nack["state"], "nacking");
        assert_eq!(first_nack["types"]["clusters"]["rejected"]["error"], "cluster 0: bad config");
        assert_eq!(json["node_types"][0]["version"], serde_json::Value::Null);
        assert_eq!(json["node_types"][1]["resources"]["routes"], 3);
    }

    #[test]
    fn pages_are_bounded_and_past_the_end_is_empty() {
        let streams = fleet();
        let page = |page, per_page| summarize(bundles(), &streams, &Filter { page, per_page, ..Filter::default() }).streams;

        let third = page(3, 100);
        let ids: Vec<u64> = third.items.iter().map(|r| r.stream.stream_id).collect();
        assert_eq!(ids, (201..=300).collect::<Vec<_>>());
        let huge = page(1, 1_000_000);
        assert_eq!((huge.per_page, huge.items.len()), (MAX_PER_PAGE, MAX_PER_PAGE), "per_page is capped");
        let last = page(20, 500);
        assert_eq!((last.items.len(), last.items.last().map(|r| r.stream.stream_id)), (500, Some(10_000)));
        let past = page(usize::MAX, 500);
        assert_eq!((past.total, past.items.len()), (10_000, 0), "a page past the end is empty, and the total still told");
        assert_eq!(page(0, 0).items.len(), 1, "page and per_page are at least 1");
    }

    #[test]
    fn the_filter_narrows_both_lists_but_not_the_node_type_counts() {
        let streams = fleet();
        let by_type = Filter { node_type: Some("gateway".into()), ..Filter::default() };
        let summary = summarize(bundles(), &streams, &by_type);
        assert_eq!(summary.streams.total, 5_000);
        assert!(summary.streams.items.iter().chain(&summary.nacking.items).all(|r| r.stream.node_type == "gateway"));
        assert_eq!(summary.nacking.total, summary.node_types[0].nacking);
        assert_eq!(summary.node_types.iter().map(|t| t.streams).sum::<usize>(), 10_000, "counts cover every stream");

        // `APP99` matches app99, app990..app999 and app9900..app9999, of both node types.
        let by_id = Filter { q: Some("APP99".into()), per_page: 500, ..Filter::default() };
        let summary = summarize(bundles(), &streams, &by_id);
        assert_eq!(summary.streams.total, 1 + 10 + 100);
        assert!(summary.streams.items.iter().all(|r| r.stream.node_id.contains("app99")));

        let both = Filter { node_type: Some("sidecar".into()), q: Some("app99".into()), ..by_id };
        assert!(summarize(bundles(), &streams, &both).streams.items.iter().all(|r| r.stream.node_id.starts_with("sidecar-app99")));
        let nothing = Filter { node_type: Some("nosuch".into()), ..Filter::default() };
        assert_eq!(summarize(bundles(), &streams, &nothing).streams.total, 0);
    }

    #[test]
    fn substring_match_ignores_ascii_case_only() {
        assert!(contains_ignore_ascii_case("sidecar-App1", "app1"));
        assert!(contains_ignore_ascii_case("x", ""));
        assert!(!contains_ignore_ascii_case("ab", "abc"));
        assert!(contains_ignore_ascii_case("sidecar-ÄÖ", "ÄÖ"));
        assert!(!contains_ignore_ascii_case("sidecar-äö", "ÄÖ"));
    }
}
