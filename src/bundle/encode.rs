//! One walk over a parsed resource gives what is stored and what is hashed:
//! its protobuf encoding, and its canonical form for the content hash.
//!
//! The encoding is prost-reflect's (fields in number order, defaults left
//! out, packed lists packed) but linear: prost-reflect sizes each nested
//! message again at every level above it, which made encoding cost more
//! than parsing. Here a nested message is written in place and its length
//! put in front of it afterwards. Map entries are written sorted by key,
//! where prost-reflect wrote them in hash order.
//!
//! The canonical form: fields in number order, defaults skipped, map entries
//! sorted by key, and every `Any` of a known type unpacked and walked too.
//! Spelling differences (`1s` vs `1.000s`, camelCase vs snake_case, key
//! order, JSON vs YAML) hash alike, and no map order can leak in.

use prost::encoding::{encode_key, encode_varint, WireType};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, ReflectMessage, Value};

use crate::schema;

/// Writes the encoding of `message` to `out` and its canonical form to `canon`.
pub(super) fn encode(message: &DynamicMessage, out: &mut Vec<u8>, canon: &mut Vec<u8>) {
    walk(message, Some(out), Some(canon));
}

/// Writes the fields of `message` to `out` and its canonical form to
/// `canon`, each when given.
fn walk(message: &DynamicMessage, mut out: Option<&mut Vec<u8>>, mut canon: Option<&mut Vec<u8>>) {
    if let Some(canon) = canon.take() {
        match unpack_any(message) {
            Some(inner) => {
                canon.extend_from_slice(b"@");
                canon.extend_from_slice(inner.descriptor().full_name().as_bytes());
                walk(&inner, None, Some(canon));
                // The `Any`'s own fields are still to be written, not hashed.
            }
            None => {
                canon.extend_from_slice(b"{");
                fields(message, out, Some(&mut *canon));
                canon.extend_from_slice(b"}");
                return;
            }
        }
    }
    if let Some(out) = out.take() {
        fields(message, Some(out), None);
    }
}

fn fields(message: &DynamicMessage, mut out: Option<&mut Vec<u8>>, mut canon: Option<&mut Vec<u8>>) {
    if let Some(whole) = out.take_if(|_| !plain(message)) {
        // Not what a parse of JSON makes: prost-reflect knows how to encode it.
        prost::Message::encode_raw(message, whole);
    }
    for (field, value) in message.fields() {
        if let Some(canon) = canon.as_deref_mut() {
            canon.extend_from_slice(&field.number().to_le_bytes());
        }
        self::field(&field, value, out.as_deref_mut(), canon.as_deref_mut());
    }
}

/// Whether `fields()` is all of `message`: no unknown fields (a parse of
/// JSON makes none) and no extensions (proto3 has none).
fn plain(message: &DynamicMessage) -> bool {
    message.descriptor().descriptor_proto().extension_range.is_empty() && message.unknown_fields().next().is_none()
}

/// One field that is set: its key and value to `out`, its value to `canon`.
fn field(field: &FieldDescriptor, value: &Value, mut out: Option<&mut Vec<u8>>, mut canon: Option<&mut Vec<u8>>) {
    let number = field.number();
    match value {
        Value::Message(message) => match out {
            Some(out) if field.is_group() => {
                encode_key(number, WireType::StartGroup, out);
                walk(message, Some(out), canon);
                encode_key(number, WireType::EndGroup, out);
            }
            Some(out) => {
                encode_key(number, WireType::LengthDelimited, out);
                nested(out, |out| walk(message, Some(out), canon));
            }
            None => walk(message, None, canon),
        },
        Value::List(items) => {
            if let Some(canon) = canon.as_deref_mut() {
                sized(canon, tag::LIST, &(items.len() as u64).to_le_bytes());
            }
            match out {
                Some(out) if field.is_packed() => {
                    let kind = field.kind();
                    encode_key(number, WireType::LengthDelimited, out);
                    let scalars = || items.iter().filter_map(Scalar::of);
                    nested(out, |out| scalars().for_each(|scalar| scalar.wire(&kind).write_payload(out)));
                    if let Some(canon) = canon {
                        scalars().for_each(|scalar| scalar.canon(canon));
                    }
                }
                mut out => items.iter().for_each(|item| self::field(field, item, out.as_deref_mut(), canon.as_deref_mut())),
            }
        }
        Value::Map(map) => {
            let Kind::Message(entry) = field.kind() else { return };
            let (Some(key_field), Some(value_field)) = (entry.get_field(1), entry.get_field(2)) else { return };
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            if let Some(canon) = canon.as_deref_mut() {
                sized(canon, tag::MAP, &(entries.len() as u64).to_le_bytes());
            }
            for (key, value) in entries {
                let key = Value::from(key.clone());
                let mut entry = |mut out: Option<&mut Vec<u8>>| {
                    for (field, value) in [(&key_field, &key), (&value_field, value)] {
                        // As prost-reflect writes an entry: each part unless it is a default.
                        let present = field.supports_presence() || !value.is_default_for_field(field);
                        self::field(field, value, out.as_deref_mut().filter(|_| present), canon.as_deref_mut());
                    }
                };
                match out.as_deref_mut() {
                    Some(out) => {
                        encode_key(number, WireType::LengthDelimited, out);
                        nested(out, |out| entry(Some(out)));
                    }
                    None => entry(None),
                }
            }
        }
        scalar => {
            let Some(scalar) = Scalar::of(scalar) else { return };
            if let Some(out) = out {
                scalar.wire(&field.kind()).write_field(number, out);
            }
            if let Some(canon) = canon {
                scalar.canon(canon);
            }
        }
    }
}

/// A scalar value, as both parses write it.
#[derive(Clone, Copy)]
pub(super) enum Scalar<'a> {
    Bool(bool),
    I32(i32),
    I64(i64),
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
    Enum(i32),
    String(&'a str),
    Bytes(&'a [u8]),
}

impl<'a> Scalar<'a> {
    fn of(value: &'a Value) -> Option<Self> {
        Some(match value {
            Value::Bool(v) => Self::Bool(*v),
            Value::I32(v) => Self::I32(*v),
            Value::I64(v) => Self::I64(*v),
            Value::U32(v) => Self::U32(*v),
            Value::U64(v) => Self::U64(*v),
            Value::F32(v) => Self::F32(*v),
            Value::F64(v) => Self::F64(*v),
            Value::EnumNumber(v) => Self::Enum(*v),
            Value::String(v) => Self::String(v),
            Value::Bytes(v) => Self::Bytes(v),
            Value::Message(_) | Value::List(_) | Value::Map(_) => return None,
        })
    }

    /// Whether a field without presence leaves it out (proto3 defaults;
    /// `-0.0` is one, as prost-reflect compares).
    pub(super) fn is_default(&self) -> bool {
        match *self {
            Self::Bool(v) => !v,
            Self::I32(v) | Self::Enum(v) => v == 0,
            Self::I64(v) => v == 0,
            Self::U32(v) => v == 0,
            Self::U64(v) => v == 0,
            Self::F32(v) => v == 0.0,
            Self::F64(v) => v == 0.0,
            Self::String(v) => v.is_empty(),
            Self::Bytes(v) => v.is_empty(),
        }
    }

    /// The value encoded as `kind`, the kind of its field.
    pub(super) fn wire(&self, kind: &Kind) -> Wire<'a> {
        match (*self, kind) {
            (Self::Bool(v), _) => Wire::Varint(u64::from(v)),
            (Self::I32(v), Kind::Sint32) => Wire::Varint(u64::from(((v << 1) ^ (v >> 31)) as u32)),
            (Self::I32(v), Kind::Sfixed32) => Wire::Fixed32(v.to_le_bytes()),
            // int32 (and an enum) is sign-extended to 64 bits.
            (Self::I32(v) | Self::Enum(v), _) => Wire::Varint(i64::from(v) as u64),
            (Self::I64(v), Kind::Sint64) => Wire::Varint(((v << 1) ^ (v >> 63)) as u64),
            (Self::I64(v), Kind::Sfixed64) => Wire::Fixed64(v.to_le_bytes()),
            (Self::I64(v), _) => Wire::Varint(v as u64),
            (Self::U32(v), Kind::Fixed32) => Wire::Fixed32(v.to_le_bytes()),
            (Self::U32(v), _) => Wire::Varint(u64::from(v)),
            (Self::U64(v), Kind::Fixed64) => Wire::Fixed64(v.to_le_bytes()),
            (Self::U64(v), _) => Wire::Varint(v),
            (Self::F32(v), _) => Wire::Fixed32(v.to_le_bytes()),
            (Self::F64(v), _) => Wire::Fixed64(v.to_le_bytes()),
            (Self::String(v), _) => Wire::Delimited(v.as_bytes()),
            (Self::Bytes(v), _) => Wire::Delimited(v),
        }
    }

    /// Writes the value's canonical form.
    pub(super) fn canon(&self, canon: &mut Vec<u8>) {
        match *self {
            Self::Bool(v) => sized(canon, tag::BOOL, &[u8::from(v)]),
            Self::I32(v) => sized(canon, tag::I32, &v.to_le_bytes()),
            Self::I64(v) => sized(canon, tag::I64, &v.to_le_bytes()),
            Self::U32(v) => sized(canon, tag::U32, &v.to_le_bytes()),
            Self::U64(v) => sized(canon, tag::U64, &v.to_le_bytes()),
            Self::F32(v) => sized(canon, tag::F32, &v.to_bits().to_le_bytes()),
            Self::F64(v) => sized(canon, tag::F64, &v.to_bits().to_le_bytes()),
            Self::String(v) => sized(canon, tag::STRING, v.as_bytes()),
            Self::Bytes(v) => sized(canon, tag::BYTES, v),
            Self::Enum(v) => sized(canon, tag::ENUM, &v.to_le_bytes()),
        }
    }
}

/// A scalar as the wire carries it.
pub(super) enum Wire<'a> {
    Varint(u64),
    Fixed32([u8; 4]),
    Fixed64([u8; 8]),
    Delimited(&'a [u8]),
}

impl Wire<'_> {
    pub(super) fn wire_type(&self) -> WireType {
        match self {
            Self::Varint(_) => WireType::Varint,
            Self::Fixed32(_) => WireType::ThirtyTwoBit,
            Self::Fixed64(_) => WireType::SixtyFourBit,
            Self::Delimited(_) => WireType::LengthDelimited,
        }
    }

    pub(super) fn write_payload(&self, out: &mut Vec<u8>) {
        match self {
            Self::Varint(v) => encode_varint(*v, out),
            Self::Fixed32(bytes) => out.extend_from_slice(bytes),
            Self::Fixed64(bytes) => out.extend_from_slice(bytes),
            Self::Delimited(bytes) => {
                encode_varint(bytes.len() as u64, out);
                out.extend_from_slice(bytes);
            }
        }
    }

    /// Writes the field: key, then payload.
    pub(super) fn write_field(&self, number: u32, out: &mut Vec<u8>) {
        encode_key(number, self.wire_type(), out);
        self.write_payload(out);
    }
}

/// The tags of the canonical form, one per kind of value (prost-reflect's
/// `Value` variants, then lists and maps). Fixed: they are in every stored
/// content hash.
pub(super) mod tag {
    pub const BOOL: u8 = 0;
    pub const I32: u8 = 1;
    pub const I64: u8 = 2;
    pub const U32: u8 = 3;
    pub const U64: u8 = 4;
    pub const F32: u8 = 5;
    pub const F64: u8 = 6;
    pub const STRING: u8 = 7;
    pub const BYTES: u8 = 8;
    pub const ENUM: u8 = 9;
    pub const LIST: u8 = 10;
    pub const MAP: u8 = 11;
}

/// A value of the canonical form: its tag, its length, its bytes.
pub(super) fn sized(canon: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    canon.push(tag);
    canon.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    canon.extend_from_slice(bytes);
}

/// Writes what `write` writes, prefixed with its length.
fn nested(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let at = open_length(out);
    write(out);
    close_length(out, at);
}

/// Keeps a byte for the length of what follows, to be put there by
/// [`close_length`]. Most nested messages are short: the content is moved
/// along only when its length needs more than one byte.
pub(super) fn open_length(out: &mut Vec<u8>) -> usize {
    out.push(0);
    out.len() - 1
}

/// Puts the length of what was written since [`open_length`] returned `at`.
pub(super) fn close_length(out: &mut Vec<u8>, at: usize) {
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = len as u8;
    } else {
        let mut head = Vec::with_capacity(10);
        encode_varint(len as u64, &mut head);
        out.splice(at..=at, head);
    }
}

/// The message inside a `google.protobuf.Any`, when its type is known.
fn unpack_any(message: &DynamicMessage) -> Option<DynamicMessage> {
    if message.descriptor().full_name() != "google.protobuf.Any" {
        return None;
    }
    let type_url = message.get_field_by_name("type_url")?;
    let name = type_url.as_str()?.rsplit('/').next()?;
    let descriptor = schema::pool().get_message_by_name(name)?;
    let value = message.get_field_by_name("value")?;
    DynamicMessage::decode(descriptor, value.as_bytes()?.clone()).ok()
}

#[cfg(test)]
pub(super) mod tests {
    use prost::Message;
    use prost_reflect::MapKey;

    use super::*;

    /// A value for `field` that is not its default.
    pub(in crate::bundle) fn sample(field: &FieldDescriptor) -> Value {
        let one = |kind: &Kind| match kind {
            Kind::Bool => Value::Bool(true),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(-300),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(-70_000_000_000),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(300),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(70_000_000_000),
            Kind::Float => Value::F32(-1.5),
            Kind::Double => Value::F64(2.25),
            Kind::String => Value::String("a string".into()),
            Kind::Bytes => Value::Bytes(b"some bytes".to_vec().into()),
            Kind::Enum(e) => Value::EnumNumber(e.values().map(|v| v.number()).find(|n| *n != 0).unwrap_or(-2)),
            Kind::Message(m) => Value::Message(DynamicMessage::new(m.clone())),
        };
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else { unreachable!() };
            let key = MapKey::String("k".into());
            let key = match one(&entry.get_field(1).unwrap().kind()) {
                Value::Bool(v) => MapKey::Bool(v),
                Value::I32(v) => MapKey::I32(v),
                Value::I64(v) => MapKey::I64(v),
                Value::U32(v) => MapKey::U32(v),
                Value::U64(v) => MapKey::U64(v),
                _ => key,
            };
            Value::Map([(key, one(&entry.get_field(2).unwrap().kind()))].into())
        } else if field.is_list() {
            Value::List(vec![one(&field.kind()), one(&field.kind())])
        } else {
            one(&field.kind())
        }
    }

    fn encoded(message: &DynamicMessage) -> Vec<u8> {
        let mut out = Vec::new();
        encode(message, &mut out, &mut Vec::new());
        out
    }

    #[test]
    fn every_field_of_every_type_is_encoded_as_prost_reflect_encodes_it() {
        let mut types = 0;
        for descriptor in schema::pool().all_messages() {
            let mut message = DynamicMessage::new(descriptor.clone());
            for field in descriptor.fields() {
                message.set_field(&field, sample(&field));
            }
            assert_eq!(encoded(&message), message.encode_to_vec(), "{}", descriptor.full_name());
            types += 1;
        }
        assert!(types > 1000, "the whole pool: {types}");
    }

    #[test]
    fn long_nested_messages_get_long_lengths() {
        let pool = schema::pool();
        let cluster = pool.get_message_by_name("envoy.config.cluster.v3.Cluster").unwrap();
        for len in [0, 1, 127, 128, 200, 16_383, 16_384, 70_000] {
            let json = serde_json::json!({"name": "c", "load_assignment": {"cluster_name": "x".repeat(len), "endpoints": [{"lb_endpoints": [{}]}]}});
            let message = DynamicMessage::deserialize(cluster.clone(), json).unwrap();
            assert_eq!(encoded(&message), message.encode_to_vec(), "{len}");
        }
    }

    #[test]
    fn map_entries_are_written_in_key_order() {
        let pool = schema::pool();
        let metadata = pool.get_message_by_name("envoy.config.core.v3.Metadata").unwrap();
        let json = serde_json::json!({"filter_metadata": {"b": {"x": 1}, "a": {}, "c": {"y": [true]}}});
        let message = DynamicMessage::deserialize(metadata.clone(), json).unwrap();
        let bytes = encoded(&message);
        assert_eq!(DynamicMessage::decode(metadata, &bytes[..]).unwrap(), message);
        // Each entry (short here): key 1, its length, then key 1 of the entry, length 1, the key.
        let (mut keys, mut rest) = (Vec::new(), &bytes[..]);
        while let [0x0a, len, entry @ ..] = rest {
            keys.push(entry[2]);
            rest = &entry[usize::from(*len)..];
        }
        assert_eq!(keys, b"abc");
    }
}
