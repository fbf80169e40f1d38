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
mod tests;
