//! Protobuf records through the JSON walk: a message of the writer's schema decoded and
//! written as its canonical JSON mapping (proto field names, 64-bit integers as numbers), the
//! pipeline's [`JsonPlan`] applied to that object as to any JSON record, and the result read
//! as a message of the derived schema and encoded.
//!
//! Whatever does not fit fails the record, never the schema: a field number the writer's
//! schema does not have (`unknown field`, whose meaning nothing says), a value the mapping
//! cannot write, or a walked object the derived message cannot hold.

use prost::Message as _;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions, Value,
};

use super::{ErrorKind, TransformError};

/// How records are written as JSON for the walk: the rule paths are proto field names, and
/// `time-truncate` and `bucket` take integer literals.
const TO_JSON: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .stringify_64_bit_integers(false);

/// Decodes `bytes` as a message of `input` and appends its JSON mapping to `json`.
pub fn to_json(
    input: &MessageDescriptor,
    bytes: &[u8],
    json: &mut Vec<u8>,
) -> Result<(), TransformError> {
    let message = DynamicMessage::decode(input.clone(), bytes)
        .map_err(|_| TransformError::at("", ErrorKind::NotProtobuf))?;
    if has_unknown_fields(&message, 0) {
        return Err(TransformError::at("", ErrorKind::UnknownFieldNumber));
    }
    let mut serializer = serde_json::Serializer::new(json);
    message
        .serialize_with_options(&mut serializer, &TO_JSON)
        .map_err(|_| TransformError::at("", ErrorKind::NotProtobuf))
}

/// Reads the walked JSON `json` as a message of `output` and appends its encoding to `out`.
pub fn from_json(
    output: &MessageDescriptor,
    json: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), TransformError> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let message = DynamicMessage::deserialize_with_options(
        output.clone(),
        &mut deserializer,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .and_then(|m| deserializer.end().map(|()| m))
    .map_err(|_| TransformError::at("", ErrorKind::DoesNotFitOutput))?;
    message
        .encode(out)
        .map_err(|_| TransformError::at("", ErrorKind::DoesNotFitOutput))
}

/// Whether the message, or one nested in it, holds field numbers its schema does not have.
fn has_unknown_fields(message: &DynamicMessage, depth: usize) -> bool {
    if message.unknown_fields().next().is_some() {
        return true;
    }
    // Decoding stops at prost's recursion limit (100) already; this only mirrors it.
    if depth > 100 {
        return true;
    }
    let nested = |value: &Value| match value {
        Value::Message(inner) => has_unknown_fields(inner, depth + 1),
        Value::List(items) => items
            .iter()
            .any(|v| matches!(v, Value::Message(inner) if has_unknown_fields(inner, depth + 1))),
        Value::Map(entries) => entries
            .values()
            .any(|v| matches!(v, Value::Message(inner) if has_unknown_fields(inner, depth + 1))),
        _ => false,
    };
    message.fields().any(|(_, value)| nested(value))
}

/// The JSON mapping of a published record's message (after its schema id: the index list,
/// then a message of `output`), for the readers of analytics topics (`subjects export`, the
/// risk estimate); `None` when it is not one.
pub fn published_json(output: &MessageDescriptor, payload: &[u8]) -> Option<Vec<u8>> {
    let (_, message) = crate::plan::protobuf::read_indexes(payload)?;
    let mut json = Vec::with_capacity(message.len() * 2);
    to_json(output, message, &mut json).ok()?;
    Some(json)
}

/// Reads a JSON line as a message of `input` (protobuf's JSON mapping: a field or a type its
/// schema does not have is refused) and appends the mapping the walk reads, as
/// [`to_json`] writes it; for file mode (`transform --pipeline` on JSON lines).
pub fn line_to_json(
    input: &MessageDescriptor,
    line: &[u8],
    json: &mut Vec<u8>,
) -> Result<(), TransformError> {
    let mut deserializer = serde_json::Deserializer::from_slice(line);
    let message = DynamicMessage::deserialize_with_options(
        input.clone(),
        &mut deserializer,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .and_then(|m| deserializer.end().map(|()| m))
    .map_err(|_| TransformError::at("", ErrorKind::NotProtobuf))?;
    let mut serializer = serde_json::Serializer::new(json);
    message
        .serialize_with_options(&mut serializer, &TO_JSON)
        .map_err(|_| TransformError::at("", ErrorKind::NotProtobuf))
}
