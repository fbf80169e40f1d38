//! The parse's fast path: a resource's JSON straight to its protobuf bytes
//! and its canonical form, with no `DynamicMessage` in between.
//!
//! It reads what most resources are made of: messages, strings, booleans,
//! numbers written as numbers, enums by name, lists, durations and the
//! wrapper types. Anything else (an `Any`, a `Struct`, a map, a `null`, a
//! number written as a string, one field under two spellings, a proto2
//! message, ...) and anything wrong gives `None`, and the resource goes
//! through prost-reflect's `DynamicMessage`, which decides what it means or
//! says where it is wrong. So what this reads, prost-reflect reads too, as
//! the same message: both take the same events from serde_json, and this
//! takes each only where prost-reflect's visitors would take it with the
//! same meaning (the tests read every case both ways). The bytes and the
//! canonical form are [`super::encode`]'s.
//!
//! It also never sees a key twice in one object (a field twice is `None`),
//! so a resource it reads needs no duplicate-key walk.

use std::{cell::OnceCell, ops::Range};

use prost::encoding::{encode_key, WireType};
use prost_reflect::{Cardinality, Kind, MessageDescriptor};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::encode::{close_length, open_length, sized, tag, Scalar};

/// A resource read by the fast path. Its bytes and canonical form stay in
/// the [`Transcoder`] until it reads the next.
pub(super) struct Transcoded<'a> {
    pub value: &'a [u8],
    pub canon: &'a [u8],
    pub name: String,
}

/// The fast path, with what it learns of each type and its buffers kept
/// from one resource to the next.
#[derive(Default)]
pub(super) struct Transcoder {
    /// One per resource type read so far, with the number of its name field.
    types: Vec<(Table, Option<u32>)>,
    out: Out,
}

/// What is written.
#[derive(Default)]
struct Out {
    wire: Vec<u8>,
    canon: Vec<u8>,
    /// The fields read of each message being read, innermost last: where
    /// each starts in `wire` and `canon`.
    fields: Vec<Span>,
    /// For putting a message's fields in number order.
    sorted: Vec<Piece>,
    scratch: Vec<u8>,
    /// The resource's name, once read.
    name: String,
    /// How many messages deep the field being read is.
    depth: usize,
}

/// Where a field starts.
#[derive(Debug, Clone, Copy)]
struct Span {
    number: u32,
    wire: usize,
    canon: usize,
}

/// A whole field, in `wire` and in `canon`.
struct Piece {
    number: u32,
    wire: Range<usize>,
    canon: Range<usize>,
}

/// A message type as the fast path reads it: its fields by name, looked up
/// without hashing, each with what its value needs.
struct Table {
    message: MessageDescriptor,
    form: Form,
    fields: Vec<Field>,
    names: Names,
}

/// Field names to indexes into `fields`: an open-addressed table, a probe
/// or two per key where a binary search compared several names.
#[derive(Default)]
struct Names {
    /// A power of two, at least twice the names, each `(hash, name, index)`.
    slots: Vec<Option<(u64, Box<str>, usize)>>,
}

impl Names {
    fn new<'a>(names: impl Iterator<Item = (&'a str, usize)> + Clone) -> Self {
        let size = (names.clone().count() * 2).next_power_of_two().max(8);
        let mut table = Names { slots: (0..size).map(|_| None).collect() };
        for (name, index) in names {
            let hash = Self::hash(name);
            let mut at = hash as usize & (size - 1);
            loop {
                match &table.slots[at] {
                    // The first taker keeps a name (see `Table::new`).
                    Some((_, taken, _)) if **taken == *name => break,
                    Some(_) => at = (at + 1) & (size - 1),
                    None => {
                        table.slots[at] = Some((hash, name.into(), index));
                        break;
                    }
                }
            }
        }
        table
    }

    fn get(&self, key: &str) -> Option<usize> {
        let size = self.slots.len();
        let hash = Self::hash(key);
        let mut at = hash as usize & size.checked_sub(1)?;
        loop {
            match &self.slots[at] {
                Some((h, name, index)) if *h == hash && **name == *key => return Some(*index),
                Some(_) => at = (at + 1) & (size - 1),
                None => return None,
            }
        }
    }

    /// FNV-1a: field names are short.
    fn hash(name: &str) -> u64 {
        name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
    }
}

/// How a message is written in JSON, as prost-reflect's
/// `deserialize_message` tells: the well-known types have forms of their own.
enum Form {
    /// An object of fields (a proto3 message).
    Fields,
    /// `google.protobuf.Duration`: a string.
    Duration,
    /// A wrapper type: the value of its field 1, of this kind.
    Wrapper(Kind),
    /// Any other well-known type, or a proto2 message: the slow path's.
    Outside,
}

struct Field {
    number: u32,
    kind: Kind,
    shape: Shape,
    packed: bool,
    presence: bool,
    oneof: Option<i32>,
    /// The table of a message field's type, made when first needed.
    child: OnceCell<Box<Table>>,
}

impl Table {
    fn new(message: &MessageDescriptor) -> Self {
        let form = match message.full_name().strip_prefix("google.protobuf.") {
            Some("Duration") => Form::Duration,
            Some("DoubleValue") => Form::Wrapper(Kind::Double),
            Some("FloatValue") => Form::Wrapper(Kind::Float),
            Some("Int64Value") => Form::Wrapper(Kind::Int64),
            Some("UInt64Value") => Form::Wrapper(Kind::Uint64),
            Some("Int32Value") => Form::Wrapper(Kind::Int32),
            Some("UInt32Value") => Form::Wrapper(Kind::Uint32),
            Some("BoolValue") => Form::Wrapper(Kind::Bool),
            Some("StringValue") => Form::Wrapper(Kind::String),
            Some(_) => Form::Outside,
            // proto3 only: its defaults are zeros, and it has neither
            // groups, extensions nor custom defaults.
            None if message.parent_file_descriptor_proto().syntax.as_deref() == Some("proto3") => Form::Fields,
            None => Form::Outside,
        };
        let mut table = Table { message: message.clone(), form, fields: Vec::new(), names: Names::default() };
        if matches!(table.form, Form::Fields) {
            let fields: Vec<_> = message.fields().collect();
            for field in &fields {
                let kind = field.kind();
                let shape = match field.cardinality() {
                    Cardinality::Repeated if matches!(&kind, Kind::Message(entry) if entry.is_map_entry()) => Shape::Map,
                    Cardinality::Repeated => Shape::List,
                    _ => Shape::One,
                };
                let (packed, presence, oneof) = (field.is_packed(), field.supports_presence(), field.field_descriptor_proto().oneof_index);
                table.fields.push(Field { number: field.number(), kind, shape, packed, presence, oneof, child: OnceCell::new() });
            }
            // JSON names first: a key is looked up by JSON name, then by
            // proto name, as prost-reflect looks.
            let json_names = fields.iter().enumerate().map(|(i, field)| (field.json_name(), i));
            table.names = Names::new(json_names.chain(fields.iter().enumerate().map(|(i, field)| (field.name(), i))));
        }
        table
    }

    /// The field `key` names.
    fn field(&self, key: &str) -> Option<&Field> {
        self.names.get(key).map(|i| &self.fields[i])
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    One,
    List,
    /// A map: the slow path's.
    Map,
}

impl Field {
    fn child(&self) -> Option<&Table> {
        match &self.kind {
            Kind::Message(message) => Some(self.child.get_or_init(|| Box::new(Table::new(message)))),
            _ => None,
        }
    }
}

/// How deep the fast path nests messages: deeper ones take the slow path.
/// Well under prost's decode limit (100), so that what this writes always
/// decodes, with no decode to prove it.
pub(super) const MAX_DEPTH: usize = 32;

/// Why the fast path gave up; never shown, the slow path explains.
fn outside<E: de::Error>() -> E {
    E::custom("not on the fast path")
}

impl Transcoder {
    /// Reads a resource of type `message` whose name is field `name_field`.
    pub(super) fn read(&mut self, json: &str, message: &MessageDescriptor, name_field: &str) -> Option<Transcoded<'_>> {
        let at = match self.types.iter().position(|(table, _)| table.message == *message) {
            Some(at) => at,
            None => {
                let name = message.get_field_by_name(name_field).map(|field| field.number());
                self.types.push((Table::new(message), name));
                self.types.len() - 1
            }
        };
        let ((table, name_field), out) = (&self.types[at], &mut self.out);
        let name_field = *name_field;
        if !matches!(table.form, Form::Fields) {
            return None;
        }
        out.wire.clear();
        out.canon.clear();
        out.fields.clear();
        out.name.clear();
        out.depth = 0;
        let mut deserializer = serde_json::Deserializer::from_str(json);
        deserializer.deserialize_map(Fields { out: &mut *out, table, name_field }).ok()?;
        deserializer.end().ok()?;
        Some(Transcoded { value: &out.wire, canon: &out.canon, name: std::mem::take(&mut out.name) })
    }
}

impl Out {
    /// Reads a message's content (no key, no length).
    fn message<'de, D: Deserializer<'de>>(&mut self, table: &Table, deserializer: D) -> Result<(), D::Error> {
        if self.depth == MAX_DEPTH {
            return Err(outside());
        }
        self.depth += 1;
        let read = self.message_at_depth(table, deserializer);
        self.depth -= 1;
        read
    }

    fn message_at_depth<'de, D: Deserializer<'de>>(&mut self, table: &Table, deserializer: D) -> Result<(), D::Error> {
        match &table.form {
            Form::Fields => deserializer.deserialize_map(Fields { out: self, table, name_field: None }),
            Form::Duration => deserializer.deserialize_str(DurationVisitor(self)),
            Form::Wrapper(kind) => {
                // Field 1, left out when it is the default.
                self.canon.push(b'{');
                deserializer.deserialize_any(ScalarVisitor { out: &mut *self, kind, slot: Slot::Field { number: 1, presence: false, name: false } })?;
                self.canon.push(b'}');
                Ok(())
            }
            Form::Outside => Err(outside()),
        }
    }

    /// Puts the fields read since `first` in number order, in `wire` and
    /// in `canon`: JSON gives them in any order.
    fn in_number_order(&mut self, first: usize) {
        let fields = &self.fields[first..];
        if fields.windows(2).all(|pair| pair[0].number < pair[1].number) {
            return;
        }
        // Each field runs to where the next begins; the last to the end.
        let ends = fields.iter().skip(1).map(|next| (next.wire, next.canon)).chain([(self.wire.len(), self.canon.len())]);
        self.sorted.clear();
        self.sorted.extend(fields.iter().zip(ends).map(|(span, (wire, canon))| Piece { number: span.number, wire: span.wire..wire, canon: span.canon..canon }));
        self.sorted.sort_unstable_by_key(|piece| piece.number);
        let (wire, canon) = (fields[0].wire, fields[0].canon);
        reorder(&mut self.wire, &mut self.scratch, wire, self.sorted.iter().map(|piece| piece.wire.clone()));
        reorder(&mut self.canon, &mut self.scratch, canon, self.sorted.iter().map(|piece| piece.canon.clone()));
    }
}

/// Rewrites `buffer` from `start` on as `pieces` of it, in their order.
fn reorder(buffer: &mut Vec<u8>, scratch: &mut Vec<u8>, start: usize, pieces: impl Iterator<Item = Range<usize>>) {
    scratch.clear();
    for piece in pieces {
        scratch.extend_from_slice(&buffer[piece]);
    }
    buffer.truncate(start);
    buffer.extend_from_slice(scratch);
}

/// A message's fields: a JSON object.
struct Fields<'a> {
    out: &'a mut Out,
    table: &'a Table,
    /// The number of the field whose string is the resource's name.
    name_field: Option<u32>,
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a message")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Fields { out, table, name_field } = self;
        out.canon.push(b'{');
        let first = out.fields.len();
        let mut oneofs = Vec::new();
        while let Some(field) = map.next_key_seed(Key(table))? {
            let number = field.number;
            if out.fields[first..].iter().any(|span| span.number == number) {
                return Err(outside());
            }
            if let Some(oneof) = field.oneof {
                if oneofs.contains(&oneof) {
                    return Err(outside());
                }
                oneofs.push(oneof);
            }
            let span = Span { number, wire: out.wire.len(), canon: out.canon.len() };
            out.fields.push(span);
            let present = map.next_value_seed(FieldValue { out: &mut *out, field, name: name_field == Some(number) })?;
            if !present {
                // Kept, empty: the field was given, and must not be again.
                out.wire.truncate(span.wire);
                out.canon.truncate(span.canon);
            }
        }
        out.in_number_order(first);
        out.fields.truncate(first);
        out.canon.push(b'}');
        Ok(())
    }
}

/// A key: the field it names.
struct Key<'a>(&'a Table);

impl<'de, 'a> DeserializeSeed<'de> for Key<'a> {
    type Value = &'a Field;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<&'a Field, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, 'a> Visitor<'de> for Key<'a> {
    type Value = &'a Field;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<&'a Field, E> {
        self.0.field(key).ok_or_else(outside)
    }
}

/// The value of one field; says whether the field is present (a default
/// scalar without presence, or an empty list, is not).
struct FieldValue<'a> {
    out: &'a mut Out,
    field: &'a Field,
    /// Whether this is the resource's name.
    name: bool,
}

impl<'de> DeserializeSeed<'de> for FieldValue<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        let FieldValue { out, field, name } = self;
        let number = field.number;
        match field.shape {
            Shape::One => {}
            Shape::List => {
                out.canon.extend_from_slice(&number.to_le_bytes());
                return deserializer.deserialize_seq(List { out, field });
            }
            Shape::Map => return Err(outside()),
        }
        match field.child() {
            Some(table) => {
                out.canon.extend_from_slice(&number.to_le_bytes());
                encode_key(number, WireType::LengthDelimited, &mut out.wire);
                let at = open_length(&mut out.wire);
                out.message(table, deserializer)?;
                close_length(&mut out.wire, at);
                Ok(true)
            }
            None => {
                let slot = Slot::Field { number, presence: field.presence, name };
                deserializer.deserialize_any(ScalarVisitor { out, kind: &field.kind, slot })
            }
        }
    }
}

/// The items of a repeated field: a JSON array. Says whether it has any.
struct List<'a> {
    out: &'a mut Out,
    field: &'a Field,
}

impl<'de> Visitor<'de> for List<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let List { out, field } = self;
        let (number, packed) = (field.number, field.packed);
        // The count, written once known.
        let count_at = out.canon.len() + 9;
        sized(&mut out.canon, tag::LIST, &0u64.to_le_bytes());
        let packed_at = packed.then(|| {
            encode_key(number, WireType::LengthDelimited, &mut out.wire);
            open_length(&mut out.wire)
        });
        let mut count = 0u64;
        match field.child() {
            Some(table) => {
                while seq.next_element_seed(Item { out: &mut *out, table, number })?.is_some() {
                    count += 1;
                }
            }
            None => {
                let slot = Slot::Item { number, packed };
                while seq.next_element_seed(ScalarVisitor { out: &mut *out, kind: &field.kind, slot })?.is_some() {
                    count += 1;
                }
            }
        }
        if let Some(at) = packed_at {
            close_length(&mut out.wire, at);
        }
        out.canon[count_at..count_at + 8].copy_from_slice(&count.to_le_bytes());
        Ok(count > 0)
    }
}

/// A message in a list.
struct Item<'a> {
    out: &'a mut Out,
    table: &'a Table,
    number: u32,
}

impl<'de> DeserializeSeed<'de> for Item<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        let Item { out, table, number } = self;
        encode_key(number, WireType::LengthDelimited, &mut out.wire);
        let at = open_length(&mut out.wire);
        out.message(table, deserializer)?;
        close_length(&mut out.wire, at);
        Ok(())
    }
}

/// Where a scalar goes.
#[derive(Clone, Copy)]
enum Slot {
    /// A field: left out when it has no presence and is the default; its
    /// string kept as the name when `name`.
    Field { number: u32, presence: bool, name: bool },
    /// An item of a list, packed or each with its key.
    Item { number: u32, packed: bool },
}

/// One scalar of kind `kind`, accepted as prost-reflect's visitor for that
/// kind accepts it (or refused as outside the fast path), and written to
/// its slot at once. Says whether it was written.
struct ScalarVisitor<'a> {
    out: &'a mut Out,
    kind: &'a Kind,
    slot: Slot,
}

impl ScalarVisitor<'_> {
    fn put<E: de::Error>(self, scalar: Scalar<'_>) -> Result<bool, E> {
        let ScalarVisitor { out, kind, slot } = self;
        let wire = scalar.wire(kind);
        match slot {
            Slot::Field { number, presence, name } => {
                if !presence && scalar.is_default() {
                    return Ok(false);
                }
                if let (true, Scalar::String(text)) = (name, scalar) {
                    out.name.push_str(text);
                }
                out.canon.extend_from_slice(&number.to_le_bytes());
                wire.write_field(number, &mut out.wire);
            }
            Slot::Item { packed: true, .. } => wire.write_payload(&mut out.wire),
            Slot::Item { number, packed: false } => wire.write_field(number, &mut out.wire),
        }
        scalar.canon(&mut out.canon);
        Ok(true)
    }

    fn integer<E: de::Error>(self, v: i128) -> Result<bool, E> {
        let scalar = match self.kind {
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => i32::try_from(v).map(Scalar::I32),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => i64::try_from(v).map(Scalar::I64),
            Kind::Uint32 | Kind::Fixed32 => u32::try_from(v).map(Scalar::U32),
            Kind::Uint64 | Kind::Fixed64 => u64::try_from(v).map(Scalar::U64),
            _ => return Err(outside()),
        };
        self.put(scalar.map_err(|_| outside())?)
    }

    fn text<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match self.kind {
            Kind::String => self.put(Scalar::String(v)),
            Kind::Enum(values) if values.full_name() != "google.protobuf.NullValue" => {
                let number = values.get_value_by_name(v).ok_or_else(outside)?.number();
                self.put(Scalar::Enum(number))
            }
            _ => Err(outside()),
        }
    }
}

impl<'de> DeserializeSeed<'de> for ScalarVisitor<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScalarVisitor<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a scalar")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        match self.kind {
            Kind::Bool => self.put(Scalar::Bool(v)),
            _ => Err(outside()),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        match self.kind {
            Kind::Double => self.put(Scalar::F64(v as f64)),
            Kind::Float => self.put(Scalar::F32(v as f32)),
            _ => self.integer(i128::from(v)),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        match self.kind {
            Kind::Double => self.put(Scalar::F64(v as f64)),
            Kind::Float => self.put(Scalar::F32(v as f32)),
            _ => self.integer(i128::from(v)),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<bool, E> {
        match self.kind {
            Kind::Double => self.put(Scalar::F64(v)),
            Kind::Float if (f64::from(f32::MIN)..=f64::from(f32::MAX)).contains(&v) => self.put(Scalar::F32(v as f32)),
            // prost-reflect takes `1.0` for an integer; rare enough to leave to it.
            _ => Err(outside()),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        self.text(v)
    }
}

/// A `google.protobuf.Duration`: `<seconds>[.<fraction>]s`.
struct DurationVisitor<'a>(&'a mut Out);

impl<'de> Visitor<'de> for DurationVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a duration")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let (seconds, nanos) = duration(v).ok_or_else(outside)?;
        let out = self.0;
        out.canon.push(b'{');
        let (seconds_kind, nanos_kind) = (Kind::Int64, Kind::Int32);
        ScalarVisitor { out: &mut *out, kind: &seconds_kind, slot: Slot::Field { number: 1, presence: false, name: false } }.put::<E>(Scalar::I64(seconds))?;
        ScalarVisitor { out: &mut *out, kind: &nanos_kind, slot: Slot::Field { number: 2, presence: false, name: false } }.put::<E>(Scalar::I32(nanos))?;
        out.canon.push(b'}');
        Ok(())
    }
}

/// Seconds and nanoseconds of a non-negative duration within
/// prost-reflect's range, written as prost-types parses it: digits, then
/// one to nine digits of fraction, then `s`.
fn duration(text: &str) -> Option<(i64, i32)> {
    const MAX_SECONDS: i64 = 315_576_000_000;
    let digits = |s: &str, most: usize| !s.is_empty() && s.len() <= most && s.bytes().all(|b| b.is_ascii_digit());
    let number = text.strip_suffix('s')?;
    let (seconds, fraction) = match number.split_once('.') {
        Some((seconds, fraction)) => (seconds, Some(fraction)),
        None => (number, None),
    };
    if !digits(seconds, 12) {
        return None;
    }
    let seconds: i64 = seconds.parse().ok()?;
    let nanos = match fraction {
        None => 0,
        Some(fraction) if digits(fraction, 9) => fraction.parse::<i32>().ok()? * 10i32.pow(9 - fraction.len() as u32),
        Some(_) => return None,
    };
    (seconds <= MAX_SECONDS).then_some((seconds, nanos))
}

#[cfg(test)]
mod tests {
    use prost_reflect::{DynamicMessage, SerializeOptions};
    use serde_json::{json, value::RawValue};
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::schema;

    fn descriptor(name: &str) -> MessageDescriptor {
        schema::pool().get_message_by_name(name).unwrap_or_else(|| panic!("{name} is in the pool"))
    }

    /// Reads `json` both ways; when the fast path reads it, prost-reflect
    /// must read the same message from it, with no key twice. Says whether
    /// the fast path read it.
    fn both(message: &MessageDescriptor, json: &str) -> bool {
        let name_field = if message.get_field_by_name("name").is_some() { "name" } else { "cluster_name" };
        let name = message.get_field_by_name(name_field).map(|f| f.number());
        let mut transcoder = Transcoder::default();
        let Some(fast) = transcoder.read(json, message, name_field) else { return false };
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let slow = DynamicMessage::deserialize(message.clone(), &mut deserializer)
            .and_then(|slow| deserializer.end().map(|()| slow))
            .unwrap_or_else(|e| panic!("the fast path read what prost-reflect refuses ({e}): {json}"));
        let (mut value, mut canon) = (Vec::new(), Vec::new());
        super::super::encode::encode(&slow, &mut value, &mut canon);
        assert_eq!(fast.value, &value[..], "bytes of {json}");
        assert_eq!(Sha256::digest(fast.canon), Sha256::digest(&canon), "canonical form of {json}");
        let slow_name = name.and_then(|n| slow.get_field_by_number(n)).and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        assert_eq!(fast.name, slow_name, "name of {json}");
        let raw: &RawValue = serde_json::from_str(json).unwrap();
        assert!(super::super::strict::unique_keys(raw, String::new).is_ok(), "no key twice in {json}");
        true
    }

    const CLUSTER: &str = "envoy.config.cluster.v3.Cluster";

    #[test]
    fn what_resources_are_made_of_takes_the_fast_path() {
        let eds = json!({"eds_config": {"ads": {}, "resource_api_version": "V3"}});
        let cases = [
            (CLUSTER, json!({"name": "c", "connect_timeout": "1s"})),
            (CLUSTER, json!({"name": "c", "type": "EDS", "connect_timeout": "0.250s", "eds_cluster_config": eds})),
            (CLUSTER, json!({"name": "c", "connectTimeout": "2.5s", "edsClusterConfig": {"serviceName": "s", "edsConfig": {"ads": {}}}, "type": "EDS"})),
            // A oneof member at its default is present; other defaults are not.
            (CLUSTER, json!({"name": "c", "type": "STATIC", "lb_policy": "ROUND_ROBIN", "respect_dns_ttl": false})),
            (CLUSTER, json!({"name": "", "lb_policy": "LEAST_REQUEST", "respect_dns_ttl": true, "dns_lookup_family": "V4_ONLY"})),
            // Wrappers: present even when zero; their value is not.
            (CLUSTER, json!({"name": "c", "per_connection_buffer_limit_bytes": 0})),
            (CLUSTER, json!({"name": "c", "per_connection_buffer_limit_bytes": 32768, "common_lb_config": {"healthy_panic_threshold": {"value": -0.0}}})),
            (CLUSTER, json!({"name": "c", "common_lb_config": {"healthy_panic_threshold": {"value": 40}, "update_merge_window": "0s"}})),
            (CLUSTER, json!({"name": "c", "common_lb_config": {"healthy_panic_threshold": {"value": 1e-3}}})),
            // Lists: of messages, empty, packed enums.
            (CLUSTER, json!({"name": "c", "circuit_breakers": {"thresholds": [{"priority": "HIGH", "max_connections": 100}, {"max_requests": 7}, {}]}})),
            (CLUSTER, json!({"name": "c", "circuit_breakers": {"thresholds": []}})),
            (CLUSTER, json!({"name": "c", "common_lb_config": {"override_host_status": {"statuses": ["HEALTHY", "DEGRADED", "UNKNOWN"]}}})),
            (CLUSTER, json!({"name": "c", "outlier_detection": {"consecutive_5xx": 5, "interval": "10s", "max_ejection_percent": 50}})),
            // Escapes in strings and in keys.
            (CLUSTER, json!({"name": "c\u{e9}\"\\x\n"})),
            ("envoy.config.endpoint.v3.ClusterLoadAssignment", json!({"cluster_name": "e", "endpoints": [{"locality": {"zone": "z"}, "priority": 1, "lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 65535}}, "hostname": "h"}, "load_balancing_weight": 1},
                {"endpoint": {"address": {"socket_address": {"address": "10.0.0.2", "port_value": 0}}}, "health_status": "HEALTHY"}]}],
                "policy": {"overprovisioning_factor": 140}})),
            ("envoy.config.route.v3.RouteConfiguration", json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*", "a"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "15s", "retry_policy": {"retry_on": "5xx", "num_retries": 3, "retriable_status_codes": [503, 504]}}},
                {"match": {"path": "/w"}, "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 2}]}}}]}]})),
            ("envoy.config.core.v3.Address", json!({"socket_address": {"address": "::1", "port_value": 1, "ipv4_compat": true}})),
        ];
        for (message, json) in cases {
            assert!(both(&descriptor(message), &json.to_string()), "takes the fast path: {json}");
        }
        let escaped_key = r#"{"na\u006de": "c", "connect_timeout": "1s"}"#;
        assert!(both(&descriptor(CLUSTER), escaped_key));
        for duration in ["0s", "0.5s", "1.000000001s", "00012s", "315576000000s", "315576000000.999999999s", "0.100s"] {
            let json = json!({"name": "c", "connect_timeout": duration}).to_string();
            assert!(both(&descriptor(CLUSTER), &json), "{json}");
        }
        for weight in [0, 1, 127, 128, u32::MAX as u64] {
            let json = json!({"endpoint": {}, "load_balancing_weight": weight}).to_string();
            assert!(both(&descriptor("envoy.config.endpoint.v3.LbEndpoint"), &json), "{json}");
        }
    }

    #[test]
    fn names_keep_their_first_field() {
        let names = Names::new([("a", 0), ("b", 1), ("a", 2), ("cc", 3)].into_iter());
        assert_eq!((names.get("a"), names.get("b"), names.get("cc"), names.get("c"), names.get("")), (Some(0), Some(1), Some(3), None, None));
        assert_eq!(Names::default().get("a"), None);
    }

    #[test]
    fn deep_messages_go_the_slow_way() {
        // A matcher nests as deep as it likes.
        let nested = |depth: usize| {
            let mut predicate = json!({"or_matcher": {"predicate": []}});
            for _ in 0..depth {
                predicate = json!({"not_matcher": predicate});
            }
            json!({"name": "l", "filter_chain_matcher": {"matcher_list": {"matchers": [{"predicate": predicate, "on_match": {"action": {"name": "a"}}}]}}})
        };
        let listener = descriptor("envoy.config.listener.v3.Listener");
        let read = |depth: usize| both(&listener, &nested(depth).to_string());
        let deepest = (0..=MAX_DEPTH).take_while(|depth| read(*depth)).last().expect("shallow matchers take the fast path");
        // Matcher, matcher list, matcher, predicate and or_matcher around the not_matchers.
        assert_eq!(deepest + 5, MAX_DEPTH);
    }

    #[test]
    fn the_rest_goes_the_slow_way() {
        let cluster = descriptor(CLUSTER);
        let cases = [
            json!({"name": null}),
            json!({"name": 5}),
            json!({"name": "c", "connect_timeout": 5}),
            json!({"name": "c", "connect_timeout": "1m"}),
            json!({"name": "c", "connect_timeout": "-1s"}),
            json!({"name": "c", "connect_timeout": "1.s"}),
            json!({"name": "c", "connect_timeout": ".5s"}),
            json!({"name": "c", "connect_timeout": " 1s"}),
            json!({"name": "c", "connect_timeout": "1.0000000001s"}),
            json!({"name": "c", "connect_timeout": "315576000001s"}),
            json!({"name": "c", "connect_timeout": "1s", "connectTimeout": "2s"}),
            json!({"name": "c", "type": "STATIC", "cluster_type": {"name": "x"}}),
            json!({"name": "c", "type": "NOPE"}),
            json!({"name": "c", "type": 1}),
            json!({"name": "c", "bogus": 1}),
            json!({"name": "c", "per_connection_buffer_limit_bytes": "5"}),
            json!({"name": "c", "per_connection_buffer_limit_bytes": 5.0}),
            json!({"name": "c", "per_connection_buffer_limit_bytes": -1}),
            json!({"name": "c", "per_connection_buffer_limit_bytes": 4_294_967_296u64}),
            json!({"name": "c", "per_connection_buffer_limit_bytes": null}),
            json!({"name": "c", "metadata": {"filter_metadata": {"a": {"k": 1}}}}),
            json!({"name": "c", "circuit_breakers": {"thresholds": [null]}}),
            json!({"name": "c", "circuit_breakers": {"thresholds": {}}}),
            json!({"name": "c", "transport_socket": {"name": "t", "typed_config": {"@type": "type.googleapis.com/google.protobuf.Empty"}}}),
            json!([]),
            json!("c"),
        ];
        for json in cases {
            assert!(!both(&cluster, &json.to_string()), "the slow way: {json}");
        }
        // A key twice, even at its default, is for the duplicate check to refuse.
        for json in [r#"{"name": "a", "name": "b"}"#, r#"{"respect_dns_ttl": false, "respect_dns_ttl": true}"#, r#"{"name": "", "name": ""}"#] {
            assert!(!both(&cluster, json), "the slow way: {json}");
        }
    }

    #[test]
    fn every_field_of_every_type_reads_as_prost_reflect_reads_it() {
        // Each type with one field set, then with all, as prost-reflect
        // prints it (proto names, then JSON names); read back both ways
        // wherever the fast path takes it.
        let (mut read, mut tried) = (0, 0);
        for message in schema::pool().all_messages() {
            let mut all = DynamicMessage::new(message.clone());
            let mut samples = Vec::new();
            for field in message.fields() {
                let value = super::super::encode::tests::sample(&field);
                let mut one = DynamicMessage::new(message.clone());
                one.set_field(&field, value.clone());
                all.set_field(&field, value);
                samples.push(one);
            }
            samples.push(all);
            for (i, sample) in samples.iter().enumerate() {
                let options = SerializeOptions::new().use_proto_field_name(i % 2 == 0);
                let Ok(json) = sample.serialize_with_options(serde_json::value::Serializer, &options) else { continue };
                tried += 1;
                read += usize::from(both(&message, &json.to_string()));
            }
        }
        assert!(read > tried / 2, "the fast path took {read} of {tried}");
    }
}
