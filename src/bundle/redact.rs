//! Keeps secrets out of what sxds prints. Envoy's protos mark the fields
//! that hold key material (a TLS private key, a PKCS#12 password, session
//! ticket keys, HMAC and generic secrets) with `udpa.annotations.sensitive`;
//! like Envoy's own config dump, every string and bytes value inside such a
//! field is printed as `[redacted]`. The stored bundle keeps them: Envoy
//! needs them.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, ReflectMessage, Value};

use crate::schema;

/// What a redacted value reads.
pub const REDACTED: &str = "[redacted]";

/// The `udpa.annotations.sensitive` field option.
fn sensitive() -> Option<&'static ExtensionDescriptor> {
    static SENSITIVE: OnceLock<Option<ExtensionDescriptor>> = OnceLock::new();
    SENSITIVE.get_or_init(|| schema::pool().get_extension_by_name("udpa.annotations.sensitive")).as_ref()
}

fn is_sensitive(field: &FieldDescriptor) -> bool {
    sensitive().is_some_and(|ext| matches!(*field.options().get_extension(ext), Value::Bool(true)))
}

/// Redacts every sensitive field of `message`, inside `Any`s too.
pub fn redact(message: &mut DynamicMessage) {
    if message.descriptor().full_name() == "google.protobuf.Any" {
        redact_any(message);
        return;
    }
    for (field, value) in message.fields_mut() {
        if is_sensitive(&field) {
            blank(value);
        } else {
            walk(value, redact);
        }
    }
}

/// Redacts the message an `Any` holds, when the pool knows its type.
fn redact_any(any: &mut DynamicMessage) {
    let type_url = any.get_field_by_name("type_url").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    let Some(inner) = type_url.rsplit('/').next().and_then(|name| schema::pool().get_message_by_name(name)) else { return };
    let Some(bytes) = any.get_field_by_name("value").and_then(|v| v.as_bytes().cloned()) else { return };
    let Ok(mut decoded) = DynamicMessage::decode(inner, bytes) else { return };
    redact(&mut decoded);
    any.set_field_by_name("value", Value::Bytes(decoded.encode_to_vec().into()));
}

/// Applies `f` to every message inside `value`.
fn walk(value: &mut Value, f: fn(&mut DynamicMessage)) {
    match value {
        Value::Message(message) => f(message),
        Value::List(items) => items.iter_mut().for_each(|item| walk(item, f)),
        Value::Map(entries) => entries.values_mut().for_each(|item| walk(item, f)),
        _ => {}
    }
}

/// Replaces every string and bytes value inside `value`.
fn blank(value: &mut Value) {
    match value {
        Value::String(text) => *text = REDACTED.to_owned(),
        Value::Bytes(bytes) => *bytes = REDACTED.as_bytes().to_vec().into(),
        Value::Message(message) => {
            for (field, inner) in message.fields_mut() {
                if matches!(field.kind(), Kind::Message(_) | Kind::String | Kind::Bytes) {
                    blank(inner);
                }
            }
        }
        Value::List(items) => items.iter_mut().for_each(blank),
        Value::Map(entries) => entries.values_mut().for_each(blank),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_marks_the_private_key_sensitive_and_the_pool_knows_it() {
        let tls_certificate = schema::pool().get_message_by_name("envoy.extensions.transport_sockets.tls.v3.TlsCertificate").unwrap();
        assert!(is_sensitive(&tls_certificate.get_field_by_name("private_key").unwrap()));
        assert!(!is_sensitive(&tls_certificate.get_field_by_name("certificate_chain").unwrap()));
    }
}
