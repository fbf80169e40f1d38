//! Strict reading of request bodies: what serde_json and serde_yaml_ng let
//! through and a bundle must not carry.
//!
//! - A key given twice in one object, at any depth, is refused in JSON and
//!   YAML alike; both parsers would silently keep the last one.
//! - YAML may not nest deeper than [`MAX_YAML_DEPTH`], nor repeat through
//!   aliases more than the body's size (at least [`MIN_YAML_ALIAS_BUDGET`]).
//!   Under serde_yaml_ng, libyaml's scanner does work in proportion to the
//!   flow nesting for every token (nested flow mappings: 80 KB cost 1.2
//!   CPU-s, 200 KB about 7), and an alias repeats its whole node. So a body
//!   whose bytes do not rule both out is first read as events by
//!   libyaml-safer, which stops at the first one past a limit; serde_yaml_ng
//!   only reads what passed.
//!
//! The parser calls [`Object`] for the envelope, [`unique_keys`] at the
//! start of every resource (on every core) and [`yaml_to_json`] for YAML.

use std::{
    borrow::Cow,
    collections::{btree_map::Entry, BTreeMap, HashMap, HashSet},
    fmt::{self, Write},
    io::{BufReader, Read},
};

use libyaml_safer::{EventData, MappingStyle, Parser, SequenceStyle};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::BundleError;

/// How deep YAML may nest: flow and block collections together, aliases
/// expanded. Envoy configs rarely pass 20 levels and the protobuf decoder
/// stops at 100. The bound is what keeps libyaml's per-token work (in
/// proportion to the flow nesting) small, so reading YAML is linear.
const MAX_YAML_DEPTH: usize = 64;

/// What aliases may repeat in all, counted as one per node plus the bytes of
/// its scalars, is the body's own size but at least this much. An alias
/// repeats its whole node, so a few KB could expand to gigabytes; within the
/// budget a large body can at most double.
const MIN_YAML_ALIAS_BUDGET: usize = 1 << 20;

/// Objects with up to this many keys are checked for a repeated key by a
/// linear scan (nearly every object in a bundle); larger ones switch to a
/// hash set, so that no object costs more than linear time.
const LINEAR_SCAN_KEYS: usize = 16;

/// The YAML events are read from the body in chunks this large: the parser
/// decodes its input to `char`s, four bytes for each byte it is given.
const YAML_READ_CHUNK: usize = 64 << 10;

/// The alias budget for a YAML body of `len` bytes (see
/// [`MIN_YAML_ALIAS_BUDGET`]).
fn yaml_alias_budget(len: usize) -> u64 {
    len.max(MIN_YAML_ALIAS_BUDGET) as u64
}

/// A JSON object with its values left raw, that remembers the first key it
/// saw twice instead of keeping the last value as a map would.
pub(super) struct Object<'a> {
    fields: BTreeMap<String, &'a RawValue>,
    repeated: Option<String>,
}

impl<'a> Object<'a> {
    /// The fields by key, or a refusal naming the first repeated key.
    pub(super) fn into_fields(self) -> Result<BTreeMap<String, &'a RawValue>, BundleError> {
        match self.repeated {
            Some(key) => Err(BundleError::at(&key, duplicate_message(&key))),
            None => Ok(self.fields),
        }
    }
}

impl<'de: 'a, 'a> de::Deserialize<'de> for Object<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for ObjectVisitor<'a> {
            type Value = Object<'a>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object<'a>, A::Error> {
                let mut object = Object { fields: BTreeMap::new(), repeated: None };
                while let Some((key, value)) = map.next_entry::<String, &'a RawValue>()? {
                    match object.fields.entry(key) {
                        Entry::Vacant(slot) => {
                            slot.insert(value);
                        }
                        Entry::Occupied(slot) => {
                            object.repeated.get_or_insert_with(|| slot.key().clone());
                        }
                    }
                }
                Ok(object)
            }
        }

        deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData))
    }
}

/// Refuses a key given twice in one object anywhere in a resource's JSON.
/// `resource` names the resource (`clusters[3]`) and is called only for a
/// refusal. Anything else wrong with the JSON is left to the schema parse,
/// which explains it better.
///
/// The walk borrows every key from the body (unless it has escapes) and
/// keeps the keys of the objects it is inside on one stack, reused from
/// object to object.
pub(super) fn unique_keys(json: &RawValue, resource: impl FnOnce() -> String) -> Result<(), BundleError> {
    let mut walk = Walk { keys: Vec::new(), found: None };
    let mut deserializer = serde_json::Deserializer::from_str(json.get());
    if JsonNode(&mut walk).deserialize(&mut deserializer).is_err() {
        if let Some(found) = walk.found {
            return Err(found.into_error(&resource()));
        }
    }
    Ok(())
}

/// Reads a YAML body into JSON, refusing repeated keys, nesting deeper than
/// [`MAX_YAML_DEPTH`] and aliases beyond their budget. Unless the body
/// cannot nest flow collections that deep nor repeat anything (see
/// [`needs_event_check`]), the limits are checked on its events before
/// serde_yaml_ng reads it.
pub(super) fn yaml_to_json(body: &[u8]) -> Result<serde_json::Value, BundleError> {
    if needs_event_check(body) {
        yaml_shape(body)?;
    }
    let mut read = YamlRead::default();
    YamlNode(&mut read).deserialize(serde_yaml_ng::Deserializer::from_slice(body)).map_err(|e| {
        if read.too_deep {
            too_deep()
        } else if let Some(duplicate) = read.found.take() {
            duplicate.into_error("")
        } else {
            BundleError::new(format!("malformed YAML: {e}"))
        }
    })
}

/// Whether libyaml could nest flow collections past the limit, or expand an
/// alias, in this body. When not, the event pre-check is skipped (it costs
/// about 40% of what serde_yaml_ng takes) and block nesting is counted while
/// the value is built; machine-written YAML, whose only flow collections are
/// `{}` and `[]`, takes that path.
///
/// Without a `&` there is no anchor for an alias to repeat (serde_yaml_ng
/// stops at an unknown one). libyaml's flow nesting never passes one more
/// than [`unclosed_openers`], so up to the limit its work per token stays
/// small.
fn needs_event_check(body: &[u8]) -> bool {
    body.contains(&b'&') || unclosed_openers(body) + 1 > MAX_YAML_DEPTH
}

/// The `[` and `{` bytes of a body that the very next byte does not close
/// (counting stops past the depth limit). Every flow collection libyaml
/// opens starts at one of them, or at a `[]` or `{}` it closes again at the
/// next token: those two bytes are two tokens (nothing can stand between
/// them) or both inside one scalar, comment or tag, since none of these ends
/// at a `]` or `}` right after an opener it holds (a plain scalar in a flow
/// collection ends at the opener itself). In UTF-16 a real bracket is never
/// next to its closer, so each one counts.
fn unclosed_openers(body: &[u8]) -> usize {
    let mut unclosed = 0;
    for (i, byte) in body.iter().enumerate() {
        let closer = match byte {
            b'[' => b']',
            b'{' => b'}',
            _ => continue,
        };
        if body.get(i + 1) != Some(&closer) {
            unclosed += 1;
            if unclosed > MAX_YAML_DEPTH {
                break;
            }
        }
    }
    unclosed
}

fn too_deep() -> BundleError {
    BundleError::new(format!("YAML nests deeper than the limit of {MAX_YAML_DEPTH} levels"))
}

/// What the YAML pre-check measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct YamlShape {
    /// The deepest nesting of collections, aliases expanded.
    depth: usize,
    /// The deepest nesting of flow collections as written, which is what
    /// libyaml's scanner carries.
    flow_depth: usize,
    /// What aliases repeat: one per node plus the bytes of its scalars.
    repeated: u64,
}

/// Reads the events of a YAML stream (every document of it) and stops at
/// the first one past a limit, before the scanner is deeper than the limit
/// plus the one line (at most 1,024 characters) libyaml looks ahead for a
/// `:`. libyaml-safer is a port of the same libyaml that serde_yaml_ng runs,
/// so both see the same nesting.
fn yaml_shape(body: &[u8]) -> Result<YamlShape, BundleError> {
    // libyaml-safer panics where libyaml stops at the end of its buffer
    // (a block scalar or an escape at the very end of the body): a line
    // break after the body, which changes no structure, keeps it from
    // there. Any other panic (a tag followed by `,` in a flow collection)
    // is a refusal too.
    std::panic::catch_unwind(|| read_shape(body)).unwrap_or_else(|_| Err(BundleError::new("malformed YAML: the YAML reader failed")))
}

fn read_shape(body: &[u8]) -> Result<YamlShape, BundleError> {
    let mut parser = Parser::new();
    let line_break: &[u8] = if body.ends_with(b"\n") || body.ends_with(b"\r") { b"" } else { b"\n" };
    parser.set_input(BufReader::with_capacity(YAML_READ_CHUNK, body.chain(line_break)));
    let mut shape = ShapeWalk { budget: yaml_alias_budget(body.len()), ..ShapeWalk::default() };
    loop {
        let event = parser.parse().map_err(|e| malformed_yaml(&e))?;
        match event.data {
            EventData::StreamEnd => return Ok(YamlShape { depth: shape.deepest, flow_depth: shape.deepest_flow, repeated: shape.repeated }),
            EventData::DocumentStart { .. } => shape.anchors.clear(),
            EventData::SequenceStart { anchor, style, .. } => shape.open(anchor, style == SequenceStyle::Flow)?,
            EventData::MappingStart { anchor, style, .. } => shape.open(anchor, style == MappingStyle::Flow)?,
            EventData::SequenceEnd | EventData::MappingEnd => shape.close(),
            EventData::Scalar { anchor, value, .. } => shape.scalar(anchor, value.len()),
            EventData::Alias { anchor } => shape.alias(&anchor)?,
            _ => {}
        }
    }
}

/// The message serde_yaml_ng would give for the same libyaml error.
fn malformed_yaml(e: &libyaml_safer::Error) -> BundleError {
    let mut message = format!("malformed YAML: {}", e.problem());
    let problem_mark = e.problem_mark();
    if let Some(mark) = problem_mark {
        let _ = write!(message, " at {mark}");
    }
    if let Some(context) = e.context() {
        let _ = write!(message, ", {context}");
        // serde_yaml_ng leaves out a mark at the very start, or the same as the problem's.
        if let Some(mark) = e.context_mark().filter(|mark| (mark.line, mark.column) != (0, 0) && Some(*mark) != problem_mark) {
            let _ = write!(message, " at {mark}");
        }
    }
    BundleError::new(message)
}

/// The nesting and alias count of a YAML stream so far.
#[derive(Default)]
struct ShapeWalk {
    /// The collections not closed yet, outermost first.
    open: Vec<OpenNode>,
    anchors: HashMap<String, Anchored>,
    /// The weight (one per node, plus the bytes of its scalars) read so far,
    /// aliases expanded.
    total: u64,
    repeated: u64,
    deepest: usize,
    /// Flow collections open, and the most that were.
    flow: usize,
    deepest_flow: usize,
    budget: u64,
}

struct OpenNode {
    anchor: Option<String>,
    flow: bool,
    /// [`ShapeWalk::total`] before this node.
    total_before: u64,
    /// The deepest nesting inside this node, counted from the document.
    deepest: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Anchored {
    /// A collection whose end has not been read (the one that opened at this
    /// total): an alias to it would repeat it inside itself, without end.
    Open { since: u64 },
    /// A node's weight, and how many levels of collections it nests, its
    /// own included.
    Node { weight: u64, depth: usize },
}

impl ShapeWalk {
    fn open(&mut self, anchor: Option<String>, flow: bool) -> Result<(), BundleError> {
        let depth = self.open.len() + 1;
        self.reach(depth)?;
        if flow {
            self.flow += 1;
            self.deepest_flow = self.deepest_flow.max(self.flow);
        }
        if let Some(anchor) = &anchor {
            self.anchors.insert(anchor.clone(), Anchored::Open { since: self.total });
        }
        self.open.push(OpenNode { anchor, flow, total_before: self.total, deepest: depth });
        self.total = self.total.saturating_add(1);
        Ok(())
    }

    fn close(&mut self) {
        // The parser balances starts and ends; a stray end is its error to report.
        let Some(node) = self.open.pop() else { return };
        if node.flow {
            self.flow -= 1;
        }
        // Unless an inner node took the name over, as serde_yaml_ng sees it.
        if let Some(anchor) = node.anchor {
            if self.anchors.get(&anchor) == Some(&Anchored::Open { since: node.total_before }) {
                let weight = self.total - node.total_before;
                let depth = node.deepest - self.open.len();
                self.anchors.insert(anchor, Anchored::Node { weight, depth });
            }
        }
        if let Some(parent) = self.open.last_mut() {
            parent.deepest = parent.deepest.max(node.deepest);
        }
    }

    fn scalar(&mut self, anchor: Option<String>, len: usize) {
        let weight = 1 + len as u64;
        self.total = self.total.saturating_add(weight);
        if let Some(anchor) = anchor {
            self.anchors.insert(anchor, Anchored::Node { weight, depth: 0 });
        }
    }

    fn alias(&mut self, anchor: &str) -> Result<(), BundleError> {
        // An unknown anchor is left to serde_yaml_ng, which refuses it.
        let Some(&anchored) = self.anchors.get(anchor) else { return Ok(()) };
        let Anchored::Node { weight, depth } = anchored else {
            return Err(BundleError::new(format!("YAML alias *{anchor} is inside the node it names")));
        };
        self.reach(self.open.len() + depth)?;
        self.repeated = self.repeated.saturating_add(weight);
        self.total = self.total.saturating_add(weight);
        if self.repeated > self.budget {
            return Err(BundleError::new(format!(
                "YAML aliases repeat more than the limit of {} (nodes plus bytes of scalars: the body's size, at least {MIN_YAML_ALIAS_BUDGET})",
                self.budget
            )));
        }
        Ok(())
    }

    /// Notes that the stream nests `depth` levels here.
    fn reach(&mut self, depth: usize) -> Result<(), BundleError> {
        if depth > MAX_YAML_DEPTH {
            return Err(too_deep());
        }
        if let Some(node) = self.open.last_mut() {
            node.deepest = node.deepest.max(depth);
        }
        self.deepest = self.deepest.max(depth);
        Ok(())
    }
}

fn duplicate_message(key: &str) -> String {
    format!("duplicate key {key:?}")
}

/// A key found twice, and where. The path is collected innermost first
/// while the error unwinds, so the walks pay nothing for it until then.
#[derive(Debug)]
struct Duplicate {
    key: String,
    within: Vec<Segment>,
}

#[derive(Debug)]
enum Segment {
    Key(String),
    Index(usize),
}

impl Duplicate {
    fn new(key: impl Into<String>) -> Self {
        Self { key: key.into(), within: Vec::new() }
    }

    /// The refusal, at `prefix` (may be empty) + the path + the key.
    fn into_error(self, prefix: &str) -> BundleError {
        let mut path = prefix.to_owned();
        for segment in self.within.iter().rev() {
            match segment {
                Segment::Key(key) => push_key(&mut path, key),
                Segment::Index(index) => {
                    let _ = write!(path, "[{index}]");
                }
            }
        }
        push_key(&mut path, &self.key);
        BundleError::at(path, duplicate_message(&self.key))
    }
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// Adds the segment the error is unwinding through, when it is a duplicate.
fn unwinding(found: &mut Option<Duplicate>, segment: impl FnOnce() -> Segment) {
    if let Some(duplicate) = found {
        duplicate.within.push(segment());
    }
}

/// The state of one resource's walk.
struct Walk<'de> {
    /// The keys seen so far in each object the walk is inside, outermost
    /// first; an object larger than [`LINEAR_SCAN_KEYS`] keeps its own set.
    keys: Vec<Cow<'de, str>>,
    found: Option<Duplicate>,
}

/// A JSON value to walk for repeated keys.
struct JsonNode<'w, 'de>(&'w mut Walk<'de>);

impl<'de> DeserializeSeed<'de> for JsonNode<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonNode<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let walk = self.0;
        let mut index = 0;
        loop {
            match seq.next_element_seed(JsonNode(&mut *walk)) {
                Ok(Some(())) => index += 1,
                Ok(None) => return Ok(()),
                Err(e) => {
                    unwinding(&mut walk.found, || Segment::Index(index));
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let walk = self.0;
        let base = walk.keys.len();
        let mut large: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(key) = map.next_key_seed(JsonKey)? {
            let repeated = match &mut large {
                Some(set) => !set.insert(key.clone()),
                None => walk.keys[base..].contains(&key),
            };
            if repeated {
                walk.found = Some(Duplicate::new(key));
                return Err(de::Error::custom("duplicate key"));
            }
            if large.is_none() {
                walk.keys.push(key.clone());
                if walk.keys.len() - base > LINEAR_SCAN_KEYS {
                    large = Some(walk.keys.drain(base..).collect());
                }
            }
            if let Err(e) = map.next_value_seed(JsonNode(&mut *walk)) {
                unwinding(&mut walk.found, || Segment::Key(key.into_owned()));
                return Err(e);
            }
        }
        walk.keys.truncate(base);
        Ok(())
    }
}

/// An object key, borrowed from the body unless it has escapes.
struct JsonKey;

impl<'de> DeserializeSeed<'de> for JsonKey {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for JsonKey {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(key))
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key.to_owned()))
    }
}

/// Reading one YAML body into JSON.
#[derive(Default)]
struct YamlRead {
    /// Collections open around the node being read.
    depth: usize,
    too_deep: bool,
    found: Option<Duplicate>,
}

impl YamlRead {
    fn enter<E: de::Error>(&mut self) -> Result<(), E> {
        self.depth += 1;
        if self.depth > MAX_YAML_DEPTH {
            self.too_deep = true;
            return Err(E::custom("too deep"));
        }
        Ok(())
    }
}

/// A YAML node read into JSON the way `serde_json::Value` reads it, except
/// that a repeated key or nesting past the limit stops the read (and is
/// noted in the state) rather than replacing the first value or going on.
struct YamlNode<'r>(&'r mut YamlRead);

impl<'de> DeserializeSeed<'de> for YamlNode<'_> {
    type Value = serde_json::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for YamlNode<'_> {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Self::Value, E> {
        de::Deserialize::deserialize(de::value::I128Deserializer::<E>::new(v)).map(serde_json::Value::Number)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Self::Value, E> {
        de::Deserialize::deserialize(de::value::U128Deserializer::<E>::new(v)).map(serde_json::Value::Number)
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // Not finite (`.inf`, `.nan`): null, as serde_json::Value has it.
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let read = self.0;
        read.enter()?;
        let mut items = Vec::new();
        loop {
            match seq.next_element_seed(YamlNode(&mut *read)) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => {
                    unwinding(&mut read.found, || Segment::Index(items.len()));
                    return Err(e);
                }
            }
        }
        read.depth -= 1;
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let read = self.0;
        read.enter()?;
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key_seed(YamlKey)? {
            if object.contains_key(&key) {
                read.found = Some(Duplicate::new(key));
                return Err(de::Error::custom("duplicate key"));
            }
            match map.next_value_seed(YamlNode(&mut *read)) {
                Ok(value) => {
                    object.insert(key, value);
                }
                Err(e) => {
                    unwinding(&mut read.found, || Segment::Key(key));
                    return Err(e);
                }
            }
        }
        read.depth -= 1;
        Ok(serde_json::Value::Object(object))
    }
}

/// A YAML mapping key, read as serde_json::Value reads keys.
struct YamlKey;

impl<'de> DeserializeSeed<'de> for YamlKey {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for YamlKey {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, key: &str) -> Result<String, E> {
        Ok(key.to_owned())
    }

    fn visit_string<E>(self, key: String) -> Result<String, E> {
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::*;
    use crate::bundle::{parse, Format};

    fn refusal(body: &str, format: Format) -> BundleError {
        parse(body.as_bytes(), format).expect_err("refused")
    }

    /// CPU time of the calling thread (Linux schedstat), to bound work
    /// without trusting the wall clock of a shared machine.
    fn thread_cpu() -> Option<Duration> {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        Some(Duration::from_nanos(stat.split_whitespace().next()?.parse().ok()?))
    }

    /// Runs `f` and asserts it used less than `bound` of CPU (where the
    /// platform tells).
    fn within_cpu<T>(bound: Duration, what: &str, f: impl FnOnce() -> T) -> T {
        let before = thread_cpu();
        let result = f();
        if let (Some(before), Some(after)) = (before, thread_cpu()) {
            let used = after - before;
            assert!(used < bound, "{what}: {used:?} of CPU, bound {bound:?}");
        }
        result
    }

    fn depth(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            serde_json::Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    // --- Repeated keys ---

    #[test]
    fn repeated_envelope_keys_are_refused_in_json_and_yaml() {
        let cases = [
            (r#"{"version": "a", "version": "b"}"#, "version\n", "version"),
            (r#"{"clusters": [{"name": "a"}], "clusters": [{"name": "b"}]}"#, "", "clusters"),
        ];
        for (json, _, key) in cases {
            let e = refusal(json, Format::Json);
            assert_eq!(e.path.as_deref(), Some(key), "{json}: {e:?}");
            assert_eq!(e.message, format!("duplicate key \"{key}\""));
        }
        for yaml in ["version: a\nversion: b\n", "{version: a, version: b}"] {
            let e = refusal(yaml, Format::Yaml);
            assert_eq!(e.path.as_deref(), Some("version"), "{yaml}: {e:?}");
            assert_eq!(e.message, "duplicate key \"version\"");
        }
        let e = refusal("clusters:\n- name: a\nclusters:\n- name: b\n", Format::Yaml);
        assert_eq!(e.path.as_deref(), Some("clusters"), "{e:?}");
        // One spelling per key: the same key twice is the refusal, not the
        // order or the spelling of different keys.
        assert!(parse(br#"{"version": "a", "clusters": []}"#, Format::Json).is_ok());
    }

    /// The resources the finding named, each in JSON and in YAML, and the
    /// path each refusal must carry.
    fn repeated_keys_in_resources() -> Vec<(serde_json::Value, &'static str, &'static str, &'static str)> {
        // (bundle without the repetition, where to splice the repeated key
        // in as "<key>: <value>", the key, the expected path)
        vec![
            (
                json!({"clusters": [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d", "connect_timeout": "1s"}]}),
                "/clusters/3",
                "name",
                "clusters[3].name",
            ),
            (
                json!({"clusters": [{"name": "a", "metadata": {"filter_metadata": {"envoy.lb": {"canary": true}, "x": {}}}}]}),
                "/clusters/0/metadata/filter_metadata",
                "envoy.lb",
                "clusters[0].metadata.filter_metadata.envoy.lb",
            ),
            (
                json!({"clusters": [{"name": "a", "metadata": {"filter_metadata": {"x": {"k": 1, "list": [{"a": 1}, {"b": {"deep": 1}}]}}}}]}),
                "/clusters/0/metadata/filter_metadata/x/list/1/b",
                "deep",
                "clusters[0].metadata.filter_metadata.x.list[1].b.deep",
            ),
            (
                json!({"endpoints": [{"cluster_name": "e", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}}}},
                    {"endpoint": {"address": {"socket_address": {"address": "10.0.0.2", "port_value": 80}}}}
                ]}]}]}),
                "/endpoints/0/endpoints/0/lb_endpoints/1/endpoint/address/socket_address",
                "port_value",
                "endpoints[0].endpoints[0].lb_endpoints[1].endpoint.address.socket_address.port_value",
            ),
        ]
    }

    /// `value` printed as JSON with `"key": <existing value>` added once more
    /// at the start of the object at `pointer`.
    fn json_with_repeat(value: &serde_json::Value, pointer: &str, key: &str) -> String {
        let mut marked = value.clone();
        let object = marked.pointer_mut(pointer).and_then(serde_json::Value::as_object_mut).expect("an object");
        let repeated = object[key].clone();
        object.insert("\u{0}REPEAT".into(), json!(null));
        let printed = marked.to_string();
        printed.replace(r#""\u0000REPEAT":null"#, &format!("{}:{repeated}", json!(key)))
    }

    #[test]
    fn repeated_keys_inside_resources_are_refused_with_their_path() {
        for (bundle, pointer, key, path) in repeated_keys_in_resources() {
            assert!(parse(bundle.to_string().as_bytes(), Format::Json).is_ok(), "{bundle}");
            let json = json_with_repeat(&bundle, pointer, key);
            let e = refusal(&json, Format::Json);
            assert_eq!(e.path.as_deref(), Some(path), "{json}: {e:?}");
            assert_eq!(e.message, format!("duplicate key {key:?}"));
            // JSON is YAML: the same body read as YAML is refused alike.
            let e = refusal(&json, Format::Yaml);
            assert_eq!(e.path.as_deref(), Some(path), "as YAML {json}: {e:?}");
            assert_eq!(e.message, format!("duplicate key {key:?}"));
        }
    }

    #[test]
    fn repeated_keys_in_block_yaml_are_refused_with_their_path() {
        let yaml = "clusters:\n- name: a\n- name: b\n  metadata:\n    filter_metadata:\n      x: {k: 1}\n      x: {k: 2}\n";
        let e = refusal(yaml, Format::Yaml);
        assert_eq!(e.path.as_deref(), Some("clusters[1].metadata.filter_metadata.x"), "{e:?}");
        let e = refusal("clusters:\n- name: a\n  connect_timeout: 1s\n  name: b\n", Format::Yaml);
        assert_eq!(e.path.as_deref(), Some("clusters[0].name"), "{e:?}");
        // A YAML key is a string to JSON: `1` and "1" are the same key.
        let yaml = "clusters:\n- name: a\n  metadata: {filter_metadata: {x: {1: a, '1': b}}}\n";
        assert_eq!(refusal(yaml, Format::Yaml).path.as_deref(), Some("clusters[0].metadata.filter_metadata.x.1"));
    }

    #[test]
    fn what_prost_reflect_refused_already_is_now_named_a_duplicate() {
        // A oneof member twice and `@type` twice were refused, as "multiple
        // fields for oneof" and "unrecognized field '@type'"; a plain field,
        // a map key and a Struct key were silently last-wins.
        let body = r#"{"clusters": [{"name": "a", "type": "STATIC", "type": "EDS"}]}"#;
        let e = refusal(body, Format::Json);
        assert_eq!((e.path.as_deref(), e.message.as_str()), (Some("clusters[0].type"), "duplicate key \"type\""));
        let hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
        let body = format!(
            r#"{{"listeners": [{{"name": "l", "filter_chains": [{{"filters": [{{"name": "f", "typed_config": {{"@type": "{hcm}", "stat_prefix": "s", "@type": "{hcm}"}}}}]}}]}}]}}"#
        );
        let e = refusal(&body, Format::Json);
        assert_eq!(e.path.as_deref(), Some("listeners[0].filter_chains[0].filters[0].typed_config.@type"), "{e:?}");
        assert_eq!(e.message, "duplicate key \"@type\"");
    }

    #[test]
    fn keys_are_compared_after_unescaping_and_large_objects_too() {
        let e = refusal(r#"{"clusters": [{"name": "a", "na\u006de": "b"}]}"#, Format::Json);
        assert_eq!(e.path.as_deref(), Some("clusters[0].name"), "{e:?}");

        // Past the linear scan: a Struct of 100 keys whose last repeats the 50th.
        let mut fields: Vec<String> = (0..100).map(|i| format!(r#""k{i}": {i}"#)).collect();
        fields.push(r#""k50": 0"#.to_owned());
        let body = format!(r#"{{"clusters": [{{"name": "a", "metadata": {{"filter_metadata": {{"x": {{{}}}}}}}}}]}}"#, fields.join(","));
        let e = refusal(&body, Format::Json);
        assert_eq!(e.path.as_deref(), Some("clusters[0].metadata.filter_metadata.x.k50"), "{e:?}");
        fields.pop();
        let body = body.replace(r#","k50": 0"#, "");
        assert!(parse(body.as_bytes(), Format::Json).is_ok());
    }

    #[test]
    fn the_same_key_in_different_objects_is_not_a_repetition() {
        let body = json!({"clusters": [
            {"name": "a", "metadata": {"filter_metadata": {"name": {"name": [{"name": 1}, {"name": 2}]}}}},
            {"name": "b"}
        ]});
        assert!(parse(body.to_string().as_bytes(), Format::Json).is_ok());
        let json = RawValue::from_string(body["clusters"][0].to_string()).unwrap();
        assert!(unique_keys(&json, || unreachable!("no refusal")).is_ok());
    }

    #[test]
    fn a_huge_object_is_checked_in_linear_time() {
        // 300,000 distinct keys: a linear scan per key would take minutes.
        let fields: Vec<String> = (0..300_000).map(|i| format!(r#""key_{i}": {i}"#)).collect();
        let json = RawValue::from_string(format!("{{{}}}", fields.join(","))).unwrap();
        within_cpu(Duration::from_secs(5), "300,000 keys", || assert!(unique_keys(&json, || unreachable!()).is_ok()));
        let repeated = RawValue::from_string(format!("{{{}, \"key_7\": 0}}", fields.join(","))).unwrap();
        let e = unique_keys(&repeated, || "clusters[0]".to_owned()).unwrap_err();
        assert_eq!(e.path.as_deref(), Some("clusters[0].key_7"));
    }

    // --- YAML depth ---

    fn nested(open: &str, close: &str, levels: usize) -> String {
        format!("{}{}", open.repeat(levels), close.repeat(levels))
    }

    fn assert_too_deep(body: &str) {
        let e = yaml_shape(body.as_bytes()).expect_err("too deep");
        assert_eq!(e.path, None, "{e:?}");
        assert!(e.message.contains("deeper than the limit of 64 levels"), "{e:?}");
    }

    #[test]
    fn deep_yaml_is_refused_before_the_quadratic_work() {
        // libyaml rescans the simple keys of every flow level for every
        // token: in serde_yaml_ng nested flow mappings of 80 KB took 1.2
        // CPU-s and each doubling takes four times as long (200 KB: about 7
        // s, 2 MB: about 12 min). Every shape is refused within 2 s of CPU.
        for (open, close) in [("[", "]"), ("{", "}"), ("[\n", "]\n"), ("{a: ", "}"), ("[a, ", "]")] {
            for bytes in [200_000, 2_000_000] {
                let levels = bytes / (open.len() + close.len());
                let body = nested(open, close, levels);
                let e = within_cpu(Duration::from_secs(2), &format!("{bytes} bytes of {open:?}"), || {
                    parse(body.as_bytes(), Format::Yaml).expect_err("refused")
                });
                assert!(e.message.contains("64 levels") && e.path.is_none(), "{e:?}");
            }
        }
        // Unbalanced and invalid after the brackets: refused all the same,
        // libyaml scans before it finds the error.
        within_cpu(Duration::from_secs(2), "unclosed", || assert_too_deep(&"[".repeat(2_000_000)));
    }

    #[test]
    fn block_nesting_counts_too_and_the_limit_is_exact() {
        let block_sequence = |levels: usize| format!("{}x\n", "- ".repeat(levels));
        let block_mapping = |levels: usize| (0..levels).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect::<String>() + &" ".repeat(levels) + "x\n";
        for body in [nested("[", "]", 64), block_sequence(64), block_mapping(64), format!("a:\n  b: {}", nested("[", "]", 62))] {
            let shape = yaml_shape(body.as_bytes()).expect("at the limit");
            assert_eq!(shape.depth, 64, "{body}");
        }
        for body in [nested("[", "]", 65), block_sequence(65), block_mapping(65), format!("a:\n  b: {}", nested("[", "]", 63))] {
            assert_too_deep(&body);
            // Whichever way the body is read.
            assert_eq!(yaml_to_json(body.as_bytes()).unwrap_err(), too_deep(), "{body}");
        }
        // Block nesting alone skips the event pass and is counted as the value is built.
        assert!(!needs_event_check(block_sequence(65).as_bytes()));
        assert_eq!(depth(&yaml_to_json(block_sequence(64).as_bytes()).unwrap()), 64);
        assert_eq!(depth(&yaml_to_json(block_mapping(64).as_bytes()).unwrap()), 64);
        within_cpu(Duration::from_secs(2), "2 MB of block sequence", || assert_too_deep(&block_sequence(1_000_000)));
    }

    #[test]
    fn brackets_in_scalars_and_comments_do_not_count() {
        let many = "[".repeat(200);
        let closes = "]".repeat(200);
        for body in [
            format!("a: \"{many}\"\nb: '{closes}'\n"),
            format!("a: x{many}\nb: y{closes}\n"),
            format!("# {many}\na: 1 # {closes}\n"),
            format!("a: |\n  {many}\n  {closes}\nb: >\n  {many}\n"),
            format!("a: [\"{many}\", '{closes}', 'don''t']\n"),
            format!("a: !<t{closes}> x\n"),
        ] {
            let shape = yaml_shape(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"));
            assert!(shape.depth <= 2, "{body}: {shape:?}");
            assert!(yaml_to_json(body.as_bytes()).is_ok(), "{body}");
        }
    }

    /// Bodies that try to hide deep flow nesting from a scanner that gets a
    /// quote, comment or block scalar wrong. Each must still be refused at
    /// 65 levels and, with 60, read as serde_yaml_ng reads it.
    #[test]
    fn nesting_hidden_behind_quotes_comments_and_block_scalars_is_still_counted() {
        type Disguise = (&'static str, fn(usize) -> String);
        let disguises: [Disguise; 10] = [
            // An apostrophe in a plain scalar opens no quote.
            ("apostrophe", |n| format!("a: don't\nb: {}\n", nested("[", "]", n))),
            ("apostrophe in flow", |n| format!("[don't, {}, 'x']\n", nested("[", "]", n - 1))),
            // Closing brackets inside quotes close nothing.
            ("quoted closers", |n| format!("{}{}\n", "[ \"]]]]\", ".repeat(n), "]".repeat(n))),
            ("single-quoted closers", |n| format!("{}{}\n", "[ ']]'']]', ".repeat(n), "]".repeat(n))),
            ("escaped quote", |n| format!("a: \"x\\\" ]]]]\"\nb: {}\n", nested("[", "]", n))),
            // A `#` inside a plain scalar starts no comment.
            ("hash in a scalar", |n| format!("a: x#{}\nb: {}\n", "]".repeat(70), nested("[", "]", n))),
            ("comment", |n| format!("# ]]]]]]]]\na: {} # ]]]]\n", nested("[", "]", n))),
            // A block scalar ends where its indentation does.
            ("block scalar", |n| format!("a: |\n  ]]]]]]]]\n  '\nb: {}\n", nested("[", "]", n))),
            // Closing brackets in a plain scalar of block context and in a verbatim tag.
            ("plain closers", |n| format!("a: x]]]]]]]]\nb: {}\n", nested("[", "]", n))),
            ("tag closers", |n| format!("{}{}\n", "[ !<t]]]]> ".repeat(n), "]".repeat(n))),
        ];
        for (name, body) in disguises {
            let deep = body(65);
            assert_too_deep(&deep);
            assert!(needs_event_check(deep.as_bytes()), "{name}");
            assert_eq!(yaml_to_json(deep.as_bytes()).unwrap_err(), too_deep(), "{name}");
            let shallow = body(60);
            let expected: Result<serde_json::Value, _> = serde_yaml_ng::from_slice(shallow.as_bytes());
            let shape = yaml_shape(shallow.as_bytes());
            match expected {
                Ok(value) => {
                    assert_eq!(shape.map(|s| s.depth).ok(), Some(depth(&value)), "{name}: {shallow}");
                    assert_eq!(yaml_to_json(shallow.as_bytes()).ok(), Some(value), "{name}");
                }
                // Not valid YAML, but not refused for its depth either.
                Err(_) => assert!(shape.is_err_and(|e| e.message.starts_with("malformed YAML:")), "{name}: {shallow}"),
            }
        }
    }

    /// Tiny pseudo-random YAML made of the characters that matter to the
    /// scanner: wherever serde_yaml_ng (libyaml) reads a value, the
    /// pre-check measures its depth exactly and the strict conversion gives
    /// the same value; wherever the pre-check finds a syntax error,
    /// serde_yaml_ng does too; flow nesting never passes what
    /// [`unclosed_openers`] allows.
    #[test]
    fn the_depth_check_agrees_with_serde_yaml_ng_on_random_yaml() {
        const PIECES: [&str; 32] = [
            "[", "]", "{", "}", ",", ", ", ":", ": ", " ", "\n", "\n  ", "- ", "? ", "a", "b", "'", "\"", "# ", "#", "|\n", ">\n", "&x ",
            "*x", "!t ", "\\", "\t", "[[", "]]", "[]", "{}", "!<a]>", "---\n",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut read, mut malformed) = (0, 0);
        for _ in 0..20_000 {
            let len = 1 + next() % 24;
            let body: String = (0..len).map(|_| PIECES[(next() % PIECES.len() as u64) as usize]).collect();
            let expected: Result<serde_json::Value, _> = serde_yaml_ng::from_slice(body.as_bytes());
            match yaml_shape(body.as_bytes()) {
                Ok(shape) => {
                    // What lets the event pass be skipped: flow nesting never passes it.
                    assert!(shape.flow_depth <= unclosed_openers(body.as_bytes()) + 1, "{body:?}: {shape:?}");
                    if let Ok(value) = expected {
                        read += 1;
                        assert_eq!(shape.depth, depth(&value), "{body:?}");
                        match yaml_to_json(body.as_bytes()) {
                            Ok(strict) => assert_eq!(strict, value, "{body:?}"),
                            Err(e) => assert!(e.message.starts_with("duplicate key"), "{body:?}: {e:?}"),
                        }
                    }
                }
                Err(e) => {
                    malformed += 1;
                    assert!(expected.is_err(), "{body:?} refused by the pre-check only: {e:?}");
                }
            }
        }
        // The generator reaches both sides.
        assert!(read > 1_000 && malformed > 1_000, "{read} read, {malformed} malformed");
    }

    #[test]
    fn syntax_errors_read_as_serde_yaml_ng_wrote_them() {
        for body in ["clusters: [1\n", "a: 'x\n", "a: b: c\n", "- a\nb: c\n", "a:\n\t- b\n"] {
            let ours = yaml_shape(body.as_bytes()).expect_err("malformed").message;
            let theirs = serde_yaml_ng::from_slice::<serde_json::Value>(body.as_bytes()).expect_err("malformed").to_string();
            assert_eq!(ours, format!("malformed YAML: {theirs}"), "{body:?}");
        }
    }

    #[test]
    fn machine_written_yaml_skips_the_event_pass_and_anchors_do_not() {
        let bundle = json!({"clusters": [{"name": "a", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}}]});
        let yaml = serde_yaml_ng::to_string(&bundle).unwrap();
        assert!(yaml.contains("ads: {}") && !needs_event_check(yaml.as_bytes()), "{yaml}");
        assert_eq!(yaml_to_json(yaml.as_bytes()).unwrap(), bundle);
        assert!(needs_event_check(b"a: &x 1\nb: *x\n"));
        // A hand-written list per line: each unclosed `[` counts, nested or not.
        let lists = "domains: [\"*\"]\n".repeat(MAX_YAML_DEPTH);
        assert!(needs_event_check(lists.as_bytes()));
        assert!(!needs_event_check(&lists.as_bytes()[lists.len() / 2..]));
    }

    // --- YAML aliases ---

    #[test]
    fn aliases_are_read_as_written_out_within_the_budget() {
        let aliased = "eds: &eds {eds_config: {ads: {}, resource_api_version: V3}}\nclusters:\n- {name: a, type: EDS, eds_cluster_config: *eds}\n- {name: b, type: EDS, eds_cluster_config: *eds}\n";
        let value = yaml_to_json(aliased.as_bytes()).unwrap();
        assert_eq!(value["clusters"][1]["eds_cluster_config"], json!({"eds_config": {"ads": {}, "resource_api_version": "V3"}}));
        assert_eq!(value, serde_yaml_ng::from_slice::<serde_json::Value>(aliased.as_bytes()).unwrap());
        let shape = yaml_shape(aliased.as_bytes()).unwrap();
        // Two repetitions of 7 nodes and their scalars.
        assert_eq!(shape.repeated, 2 * (7 + "eds_config".len() + "ads".len() + "resource_api_version".len() + "V3".len()) as u64);
    }

    #[test]
    fn alias_bombs_are_refused_quickly() {
        // Billion laughs: nine levels of ten aliases each, 10^9 strings.
        let mut laughs = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let aliases = vec![format!("*a{}", i - 1); 10].join(", ");
            laughs.push_str(&format!("a{i}: &a{i} [{aliases}]\n"));
        }
        // Quadratic: one anchor of 100,000 nodes and 100,000 aliases to it.
        let big = format!("big: &big [{}]\nuse: [{}]\n", vec!["x"; 100_000].join(", "), vec!["*big"; 100_000].join(", "));
        for body in [laughs, big] {
            let e = within_cpu(Duration::from_secs(2), "alias bomb", || parse(body.as_bytes(), Format::Yaml).expect_err("refused"));
            assert!(e.message.contains("YAML aliases repeat more than the limit of 1048576"), "{e:?}");
            assert_eq!(e.path, None);
        }
    }

    #[test]
    fn aliases_count_for_depth_and_may_not_contain_themselves() {
        // 40 levels anchored, used 30 levels down: 70 in the value.
        let body = format!("a: &deep {}\nb: {}*deep{}\n", nested("[", "]", 40), "[".repeat(29), "]".repeat(29));
        assert_too_deep(&body);
        let body = format!("a: &deep {}\nb: {}*deep{}\n", nested("[", "]", 30), "[".repeat(29), "]".repeat(29));
        assert_eq!(yaml_shape(body.as_bytes()).unwrap().depth, 60);
        let e = refusal("a: &a [1, *a]\n", Format::Yaml);
        assert!(e.message.contains("alias *a is inside the node it names"), "{e:?}");
        // The name taken over inside the node, as serde_yaml_ng resolves it.
        let body = "a: &a [&a x, *a]\nb: *a\n";
        assert_eq!(yaml_to_json(body.as_bytes()).unwrap(), serde_yaml_ng::from_slice::<serde_json::Value>(body.as_bytes()).unwrap());
    }

    /// A bundle like the load generator's ingest: 10,000 clusters and as
    /// many endpoint sets of 7 endpoints, about 10 MB of JSON.
    fn ten_mb_bundle() -> String {
        let eds = json!({"ads": {}, "resource_api_version": "V3"});
        let clusters: Vec<_> = (0..10_000)
            .map(|i| json!({"name": format!("cluster_{i:05}"), "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": {"eds_config": eds}}))
            .collect();
        let endpoints: Vec<_> = (0..10_000)
            .map(|i| {
                let lb_endpoints: Vec<_> = (0..7)
                    .map(|e| {
                        let address = format!("10.{}.{}.{}", (i >> 8) & 0xff, i & 0xff, e + 1);
                        json!({"endpoint": {"address": {"socket_address": {"address": address, "port_value": 8000}}}, "load_balancing_weight": 1})
                    })
                    .collect();
                json!({"cluster_name": format!("cluster_{i:05}"), "endpoints": [{"lb_endpoints": lb_endpoints}]})
            })
            .collect();
        json!({"version": "v1", "clusters": clusters, "endpoints": endpoints}).to_string()
    }

    #[test]
    #[ignore = "measurement: cargo test --release --lib bundle::strict -- --ignored --nocapture"]
    fn cost_of_the_repeated_key_check_on_a_10_mb_bundle() {
        let body = ten_mb_bundle();
        assert!(body.len() > 9_000_000, "{}", body.len());
        let envelope: BTreeMap<String, &RawValue> = serde_json::from_str::<Object<'_>>(&body).unwrap().into_fields().unwrap();
        let resources: Vec<&RawValue> =
            ["clusters", "endpoints"].iter().flat_map(|key| serde_json::from_str::<Vec<&RawValue>>(envelope[*key].get()).unwrap()).collect();
        assert_eq!(resources.len(), 20_000);
        let median = |f: &dyn Fn()| {
            let mut runs: Vec<Duration> = (0..7)
                .map(|_| {
                    let start = Instant::now();
                    f();
                    start.elapsed()
                })
                .collect();
            runs.sort();
            runs[runs.len() / 2]
        };
        let check = median(&|| resources.iter().for_each(|json| unique_keys(json, || unreachable!()).unwrap()));
        let whole = median(&|| assert_eq!(parse(body.as_bytes(), Format::Json).unwrap().stored.count(crate::resource_type::ResourceType::Cluster), 10_000));
        // The process's CPU (every core) for one parse, in clock ticks.
        let process_ticks = || -> u64 {
            let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
            let fields: Vec<&str> = stat.rsplit_once(')').expect("stat").1.split_whitespace().collect();
            fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
        };
        let before = process_ticks();
        (0..5).for_each(|_| assert!(parse(body.as_bytes(), Format::Json).is_ok()));
        let parse_cpu = Duration::from_millis((process_ticks() - before) * 10 / 5);
        println!(
            "{:.1} MB, 20,000 resources: the check alone {check:.2?} on one core (~{:.2?} per core on {} cores); parse() with it {whole:.2?} wall, {parse_cpu:.2?} CPU (100 Hz ticks)",
            body.len() as f64 / 1e6,
            check / std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        );
    }

    #[test]
    #[ignore = "measurement: cargo test --release --lib bundle::strict -- --ignored --nocapture"]
    fn cost_of_the_yaml_limits() {
        // CPU as schedstat tells it, and the wall clock for short runs the
        // scheduler's accounting may not have seen yet.
        struct Cost(Duration, Duration);
        impl fmt::Display for Cost {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "{:.2?} of CPU ({:.2?} wall)", self.0, self.1)
            }
        }
        let cpu = |f: &dyn Fn()| {
            let (before, start) = (thread_cpu().expect("Linux schedstat"), Instant::now());
            f();
            Cost(thread_cpu().expect("Linux schedstat") - before, start.elapsed())
        };
        for (open, close) in [("[", "]"), ("{a: ", "}"), ("[a, ", "]"), ("[\n", "]\n")] {
            for bytes in [200_000, 2_000_000] {
                let body = nested(open, close, bytes / (open.len() + close.len()));
                let used = cpu(&|| assert_too_deep(&body));
                println!("{bytes} bytes of {open:?}...{close:?}: refused after {used}");
            }
            // What serde_yaml_ng alone costs on smaller ones.
            for bytes in [20_000, 40_000, 80_000, 160_000] {
                let body = nested(open, close, bytes / (open.len() + close.len()));
                let used = cpu(&|| assert!(serde_yaml_ng::from_slice::<serde_json::Value>(body.as_bytes()).is_err()));
                println!("{bytes} bytes of {open:?}...{close:?}, serde_yaml_ng alone: {used}");
            }
        }
        let laughs = (1..10).fold(String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"), |body, i| {
            body + &format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 10].join(", "))
        });
        let used = cpu(&|| assert!(yaml_shape(laughs.as_bytes()).is_err()));
        println!("billion laughs: refused after {used}");

        let json: serde_json::Value = serde_json::from_str(&ten_mb_bundle()).unwrap();
        let yaml = serde_yaml_ng::to_string(&json).unwrap();
        let check = cpu(&|| assert!(yaml_shape(yaml.as_bytes()).unwrap().depth > 5));
        let convert = cpu(&|| assert!(serde_yaml_ng::from_slice::<serde_json::Value>(yaml.as_bytes()).is_ok()));
        let strict = cpu(&|| assert!(yaml_to_json(yaml.as_bytes()).is_ok()));
        println!(
            "{:.1} MB of machine-written YAML: the event pass (skipped for it) {check}; serde_yaml_ng to a value {convert}; yaml_to_json {strict}",
            yaml.len() as f64 / 1e6
        );
    }
}
