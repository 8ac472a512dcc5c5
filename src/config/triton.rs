//! Triton's model configuration, `config.pbtxt` (protobuf text format) or the JSON a
//! `load` request carries, read with prost-reflect against `proto/triton/model_config.proto`
//! (compiled at run time by protox from the embedded text). The whole message is parsed,
//! so real configurations are accepted; the fields vigil acts on are taken into a
//! [`TritonConfig`], and every other field that is set is named in
//! [`TritonConfig::ignored`] for the repository index. Part of the ground floor: imports
//! nothing of vigil.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};
use serde::Deserialize;

use super::VersionPolicyConfig;

/// Triton's model configuration schema, written from its specification.
const MODEL_CONFIG_PROTO: &str = include_str!("../../proto/triton/model_config.proto");
const PROTO_NAME: &str = "triton/model_config.proto";

/// The ONNX platform and backend names Triton uses; the only ones vigil serves.
pub const ONNX_PLATFORM: &str = "onnxruntime_onnx";
pub const ONNX_BACKEND: &str = "onnxruntime";

struct EmbeddedProto;

impl protox::file::FileResolver for EmbeddedProto {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        if name == PROTO_NAME {
            protox::file::File::from_source(name, MODEL_CONFIG_PROTO)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

fn model_config_descriptor() -> MessageDescriptor {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut compiler = protox::Compiler::with_file_resolver(EmbeddedProto);
        compiler
            .open_file(PROTO_NAME)
            .expect("the embedded model_config.proto compiles (this is a bug)");
        compiler.descriptor_pool()
    })
    .get_message_by_name("inference.ModelConfig")
    .expect("model_config.proto defines inference.ModelConfig (this is a bug)")
}

/// One input or output as the configuration declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TritonIo {
    pub name: String,
    /// Triton's name, e.g. `TYPE_INT32`; `TYPE_INVALID` when not given.
    pub data_type: String,
    /// Without the batch dimension when `max_batch_size > 0` (Triton's meaning).
    pub dims: Vec<i64>,
}

/// `dynamic_batching`: what vigil's batcher takes from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TritonBatching {
    pub preferred_batch_sizes: Vec<usize>,
    pub max_queue_delay_us: u64,
    pub max_queue_size: Option<usize>,
}

/// The fields of a Triton model configuration that vigil acts on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TritonConfig {
    pub name: String,
    pub platform: String,
    pub backend: String,
    /// `0`: shapes below are full shapes, no batching; `n > 0`: a batch dimension of at
    /// most `n` comes first and is not written in `dims`.
    pub max_batch_size: usize,
    pub inputs: Vec<TritonIo>,
    pub outputs: Vec<TritonIo>,
    pub version_policy: Option<VersionPolicyConfig>,
    pub dynamic_batching: Option<TritonBatching>,
    /// Instances in all `instance_group`s together (vigil reports it; its worker pool is
    /// shared by every model, `--workers`).
    pub instance_count: Option<u32>,
    pub parameters: BTreeMap<String, String>,
    /// Fields that are set but that vigil does not act on, as dotted paths.
    pub ignored: Vec<String>,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TritonConfigError {
    #[error("cannot parse config.pbtxt: {0}")]
    Text(String),
    #[error("cannot parse the model configuration JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Invalid(String),
}

// The configuration in proto3 JSON with proto field names, for serde.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Raw {
    name: String,
    platform: String,
    backend: String,
    max_batch_size: i64,
    input: Vec<RawIo>,
    output: Vec<RawIo>,
    version_policy: Option<RawPolicy>,
    dynamic_batching: Option<RawBatching>,
    instance_group: Vec<RawGroup>,
    parameters: BTreeMap<String, RawParameter>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawIo {
    name: String,
    data_type: String,
    dims: Vec<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawPolicy {
    latest: Option<RawLatest>,
    all: Option<serde_json::Value>,
    specific: Option<RawSpecific>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawLatest {
    num_versions: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawSpecific {
    versions: Vec<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawBatching {
    preferred_batch_size: Vec<i64>,
    max_queue_delay_microseconds: u64,
    default_queue_policy: Option<RawQueuePolicy>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawQueuePolicy {
    max_queue_size: u64,
}

#[derive(Deserialize)]
#[serde(default)]
struct RawGroup {
    count: i64,
}

impl Default for RawGroup {
    fn default() -> Self {
        // Triton's default: one instance.
        RawGroup { count: 1 }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawParameter {
    string_value: String,
}

/// The fields (as dotted paths) vigil acts on; a set field outside these is ignored.
const USED: &[&str] = &[
    "name",
    "platform",
    "backend",
    "max_batch_size",
    "input",
    "input.name",
    "input.data_type",
    "input.dims",
    "output",
    "output.name",
    "output.data_type",
    "output.dims",
    "version_policy",
    "version_policy.latest",
    "version_policy.latest.num_versions",
    "version_policy.all",
    "version_policy.specific",
    "version_policy.specific.versions",
    "dynamic_batching",
    "dynamic_batching.preferred_batch_size",
    "dynamic_batching.max_queue_delay_microseconds",
    "dynamic_batching.default_queue_policy",
    "dynamic_batching.default_queue_policy.max_queue_size",
    "instance_group",
    "instance_group.count",
    "instance_group.kind",
    "instance_group.name",
    "parameters",
];

/// Collects the set fields of `msg` that vigil does not act on.
fn ignored_fields(msg: &DynamicMessage, prefix: &str, out: &mut Vec<String>) {
    for (field, value) in msg.fields() {
        let path = if prefix.is_empty() {
            field.name().to_string()
        } else {
            format!("{prefix}.{}", field.name())
        };
        if !USED.contains(&path.as_str()) {
            if !out.contains(&path) {
                out.push(path);
            }
            continue;
        }
        if path == "parameters" {
            continue;
        }
        let children: Vec<&DynamicMessage> = match value {
            Value::Message(m) => vec![m],
            Value::List(items) => items.iter().filter_map(Value::as_message).collect(),
            _ => Vec::new(),
        };
        for child in children {
            ignored_fields(child, &path, out);
        }
    }
}

/// Triton's configurations write lists of messages as `input [ {..}, {..} ]`, without the
/// colon that prost-reflect's text parser wants before a `[` (protobuf's C++ parser takes
/// both): puts it in, outside strings and comments. Nothing else is changed.
fn colon_before_lists(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut comment = false;
    let mut last = ' ';
    for c in text.chars() {
        if comment {
            comment = c != '\n';
        } else if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
        } else if c == '"' || c == '\'' {
            quote = Some(c);
        } else if c == '#' {
            comment = true;
        } else if c == '[' && (last.is_ascii_alphanumeric() || last == '_') {
            out.push(':');
        }
        if !c.is_whitespace() && !comment {
            last = c;
        }
        out.push(c);
    }
    out
}

impl TritonConfig {
    /// Parses `config.pbtxt` text.
    pub fn from_text(text: &str) -> Result<TritonConfig, TritonConfigError> {
        let text = colon_before_lists(text);
        let msg = DynamicMessage::parse_text_format(model_config_descriptor(), &text)
            .map_err(|e| TritonConfigError::Text(e.to_string()))?;
        TritonConfig::from_message(&msg)
    }

    /// A load request's configuration override for `model` (Triton's JSON form, from
    /// HTTP's `parameters.config` or gRPC's `config` parameter). The error is the whole
    /// message, Triton's text first.
    pub fn load_override(model: &str, text: &str) -> Result<TritonConfig, String> {
        let bad = |why: String| {
            format!(
                "failed to load '{model}', failed to parse the model configuration override: {why}"
            )
        };
        let parsed = TritonConfig::from_json(text).map_err(|e| bad(e.to_string()))?;
        if !parsed.name.is_empty() && parsed.name != model {
            return Err(bad(format!(
                "its name '{}' is not the model's name",
                parsed.name
            )));
        }
        Ok(parsed)
    }

    /// Parses the JSON form (what `load` with a `config` parameter carries).
    pub fn from_json(text: &str) -> Result<TritonConfig, TritonConfigError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let msg = DynamicMessage::deserialize(model_config_descriptor(), &mut de)
            .map_err(|e| TritonConfigError::Json(e.to_string()))?;
        de.end()
            .map_err(|e| TritonConfigError::Json(e.to_string()))?;
        TritonConfig::from_message(&msg)
    }

    fn from_message(msg: &DynamicMessage) -> Result<TritonConfig, TritonConfigError> {
        let options = prost_reflect::SerializeOptions::new()
            .use_proto_field_name(true)
            .stringify_64_bit_integers(false);
        let json = msg
            .serialize_with_options(serde_json::value::Serializer, &options)
            .map_err(|e| TritonConfigError::Invalid(e.to_string()))?;
        let raw: Raw =
            serde_json::from_value(json).map_err(|e| TritonConfigError::Invalid(e.to_string()))?;
        let invalid = |m: String| TritonConfigError::Invalid(m);
        let max_batch_size = usize::try_from(raw.max_batch_size)
            .map_err(|_| invalid(format!("max_batch_size is {}", raw.max_batch_size)))?;
        if !raw.platform.is_empty() && raw.platform != ONNX_PLATFORM {
            return Err(invalid(format!(
                "platform '{}' is not served: vigil serves ONNX models (platform '{ONNX_PLATFORM}', backend '{ONNX_BACKEND}')",
                raw.platform
            )));
        }
        if !raw.backend.is_empty() && raw.backend != ONNX_BACKEND {
            return Err(invalid(format!(
                "backend '{}' is not served: vigil serves ONNX models (platform '{ONNX_PLATFORM}', backend '{ONNX_BACKEND}')",
                raw.backend
            )));
        }
        let io = |list: Vec<RawIo>, what: &str| -> Result<Vec<TritonIo>, TritonConfigError> {
            list.into_iter()
                .map(|io| {
                    if io.name.is_empty() {
                        return Err(invalid(format!("an {what} has no name")));
                    }
                    if let Some(d) = io.dims.iter().find(|&&d| d < -1 || d == 0) {
                        return Err(invalid(format!(
                            "{what} '{}' has dimension {d} (dims are positive, or -1 for any size)",
                            io.name
                        )));
                    }
                    Ok(TritonIo {
                        name: io.name,
                        data_type: if io.data_type.is_empty() {
                            "TYPE_INVALID".into()
                        } else {
                            io.data_type
                        },
                        dims: io.dims,
                    })
                })
                .collect()
        };
        let version_policy = match raw.version_policy {
            None => None,
            Some(p) => Some(match (p.latest, p.all, p.specific) {
                (Some(l), None, None) => VersionPolicyConfig {
                    latest: Some(usize::try_from(l.num_versions).unwrap_or(usize::MAX)),
                    ..Default::default()
                },
                (None, Some(_), None) => VersionPolicyConfig {
                    all: Some(true),
                    ..Default::default()
                },
                (None, None, Some(s)) => VersionPolicyConfig {
                    specific: Some(
                        s.versions
                            .iter()
                            .map(|&v| u64::try_from(v).unwrap_or(0))
                            .collect(),
                    ),
                    ..Default::default()
                },
                _ => VersionPolicyConfig::default(),
            }),
        };
        if let Some(vp) = &version_policy {
            vp.policy().map_err(|e| {
                invalid(e.replace(
                    "version_policy.latest",
                    "version_policy latest num_versions",
                ))
            })?;
        }
        let dynamic_batching = match raw.dynamic_batching {
            None => None,
            Some(b) => Some(TritonBatching {
                preferred_batch_sizes: b
                    .preferred_batch_size
                    .iter()
                    .map(|&p| {
                        usize::try_from(p).ok().filter(|&p| p > 0).ok_or_else(|| {
                            invalid(format!(
                                "dynamic_batching preferred_batch_size {p} is not positive"
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?,
                max_queue_delay_us: b.max_queue_delay_microseconds,
                max_queue_size: b
                    .default_queue_policy
                    .map(|q| q.max_queue_size as usize)
                    .filter(|&n| n > 0),
            }),
        };
        if dynamic_batching.is_some() && max_batch_size == 0 {
            return Err(invalid(
                "dynamic_batching needs max_batch_size > 0 (the largest batch)".into(),
            ));
        }
        let instance_count = if raw.instance_group.is_empty() {
            None
        } else {
            let mut total: u32 = 0;
            for g in &raw.instance_group {
                let c = u32::try_from(g.count)
                    .ok()
                    .filter(|&c| c > 0)
                    .ok_or_else(|| {
                        invalid(format!("instance_group count {} is not positive", g.count))
                    })?;
                total = total.saturating_add(c);
            }
            Some(total)
        };
        let mut ignored = Vec::new();
        ignored_fields(msg, "", &mut ignored);
        Ok(TritonConfig {
            name: raw.name,
            platform: raw.platform,
            backend: raw.backend,
            max_batch_size,
            inputs: io(raw.input, "input")?,
            outputs: io(raw.output, "output")?,
            version_policy,
            dynamic_batching,
            instance_count,
            parameters: raw
                .parameters
                .into_iter()
                .map(|(k, v)| (k, v.string_value))
                .collect(),
            ignored,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPLE: &str = r#"
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { specific: { versions: [1, 2] } }
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 500 preserve_ordering: true }
instance_group [ { count: 2 kind: KIND_CPU }, { count: 1 } ]
parameters { key: "note" value: { string_value: "hello" } }
optimization { input_pinned_memory { enable: false } }
model_warmup [ { name: "w" batch_size: 1 inputs { key: "INPUT0" value: { data_type: TYPE_INT32 dims: [16] zero_data: true } } } ]
"#;

    #[test]
    fn reads_a_triton_configuration() {
        let c = TritonConfig::from_text(SIMPLE).unwrap();
        assert_eq!(c.name, "simple");
        assert_eq!(c.max_batch_size, 8);
        assert_eq!(c.inputs.len(), 2);
        assert_eq!(c.inputs[1].name, "INPUT1");
        assert_eq!(c.inputs[1].data_type, "TYPE_INT32");
        assert_eq!(c.inputs[1].dims, [16]);
        assert_eq!(c.version_policy.unwrap().specific, Some(vec![1, 2]));
        let b = c.dynamic_batching.unwrap();
        assert_eq!(b.preferred_batch_sizes, [4, 8]);
        assert_eq!(b.max_queue_delay_us, 500);
        assert_eq!(c.instance_count, Some(3));
        assert_eq!(c.parameters["note"], "hello");
        assert_eq!(
            c.ignored,
            [
                "dynamic_batching.preserve_ordering",
                "optimization",
                "model_warmup"
            ]
        );
    }

    #[test]
    fn lists_with_and_without_colon_read_the_same() {
        assert_eq!(
            colon_before_lists("input [ { dims: [1] } ] # a [ b\nname: \"x [y\" output["),
            "input :[ { dims: [1] } ] # a [ b\nname: \"x [y\" output:["
        );
    }

    #[test]
    fn the_json_form_reads_the_same() {
        let json = r#"{"name":"simple","backend":"onnxruntime","max_batch_size":4,
            "input":[{"name":"INPUT0","data_type":"TYPE_INT32","dims":["16"]}],
            "version_policy":{"latest":{"num_versions":2}}}"#;
        let c = TritonConfig::from_json(json).unwrap();
        assert_eq!(c.max_batch_size, 4);
        assert_eq!(c.inputs[0].dims, [16]);
        assert_eq!(c.version_policy.unwrap().latest, Some(2));
    }

    #[test]
    fn bad_configurations_say_why() {
        for (text, want) in [
            ("name: \"x\" bogus_field: 3", "bogus_field"),
            ("max_batch_size: \"eight\"", "cannot parse config.pbtxt"),
            (
                "platform: \"tensorflow_savedmodel\"",
                "platform 'tensorflow_savedmodel' is not served",
            ),
            ("backend: \"python\"", "backend 'python' is not served"),
            ("max_batch_size: -1", "max_batch_size is -1"),
            ("input [{ name: \"a\" dims: [0] }]", "dimension 0"),
            ("dynamic_batching { }", "needs max_batch_size > 0"),
            (
                "max_batch_size: 2 dynamic_batching { preferred_batch_size: [-4] }",
                "not positive",
            ),
            (
                "version_policy { latest { num_versions: 0 } }",
                "at least 1",
            ),
            ("instance_group [{ count: -2 }]", "count -2"),
            ("name: \"\\xff\\xfe", "cannot parse"),
        ] {
            let err = TritonConfig::from_text(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        assert!(TritonConfig::from_json("{\"max_batch_size\": \"x\"}").is_err());
        assert!(TritonConfig::from_json("[1]").is_err());
        assert!(TritonConfig::from_json("{} trailing").is_err());
    }
}
