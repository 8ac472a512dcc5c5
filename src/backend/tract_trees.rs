//! Two-class `TreeEnsembleClassifier`s, rewritten before tract parses them so tract
//! answers what ONNX Runtime answers.
//!
//! tract 0.23.9 gets the two-class case wrong (wrong labels from random forests, a load
//! failure on gradient boosting); its many-class path is right. skl2onnx writes every
//! two-class forest and boosted ensemble the same way: all leaf weights on class 0, at most
//! one base value. For those ONNX Runtime (1.31.1, checked by
//! `tests/python/make_tree_oracles.py`) computes s = the weights reached + `base_values[0]`,
//! then
//! - label `classlabels[1]` iff `s > t`, with t = 0.5 when no weight is negative, else 0;
//! - probabilities `[sigmoid(-s), sigmoid(s)]` for LOGISTIC; for NONE, SOFTMAX and
//!   SOFTMAX_ZERO `[1 - s, s]` when no weight is negative, else `[-s, s]`.
//!
//! The rewrite keeps the trees and moves every weight to class 1, with base values
//! `[t, base]` and no post-transform: tract's many-class path then scores each row
//! `[t, s]`, and its argmax (the first index on ties) picks class 1 exactly when `s > t`.
//! A `Gather` takes s out, and elementwise nodes build the probabilities under the original
//! output name. Any other two-class layout is refused with the reason: vigil never serves
//! a model on an engine known to answer it wrongly.

use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType as PbType;

const TENSOR_ATTRS: [&str; 4] = [
    "base_values_as_tensor",
    "class_weights_as_tensor",
    "nodes_values_as_tensor",
    "nodes_hitrates_as_tensor",
];

/// A two-class tree node that cannot be rewritten: its name and why.
#[derive(Debug)]
pub struct Refused {
    pub node: String,
    pub reason: String,
}

/// The model with every two-class `TreeEnsembleClassifier` rewritten, `None` when it has
/// none, or why one cannot be.
pub fn rewrite(proto: &pb::ModelProto) -> Result<Option<pb::ModelProto>, Refused> {
    let Some(graph) = proto.graph.as_ref() else {
        return Ok(None);
    };
    if !graph.node.iter().any(is_binary_trees) {
        return Ok(None);
    }
    let mut model = proto.clone();
    let graph = model.graph.as_mut().expect("checked above");
    let mut nodes = Vec::with_capacity(graph.node.len() + 8);
    for node in std::mem::take(&mut graph.node) {
        if is_binary_trees(&node) {
            let plan = check(&node).map_err(|reason| Refused {
                node: node.name.clone(),
                reason,
            })?;
            emit(node, &plan, &mut nodes, &mut graph.initializer);
        } else {
            nodes.push(node);
        }
    }
    graph.node = nodes;
    if !model
        .opset_import
        .iter()
        .any(|o| o.domain.is_empty() || o.domain == "ai.onnx")
    {
        model.opset_import.push(pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        });
    }
    Ok(Some(model))
}

fn attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn class_count(node: &pb::NodeProto) -> usize {
    ["classlabels_int64s", "classlabels_strings"]
        .iter()
        .filter_map(|n| attr(node, n))
        .map(|a| a.ints.len() + a.strings.len())
        .max()
        .unwrap_or(0)
}

fn is_binary_trees(node: &pb::NodeProto) -> bool {
    node.op_type == "TreeEnsembleClassifier" && class_count(node) <= 2
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Probabilities {
    /// `[sigmoid(-s), sigmoid(s)]`
    Logistic,
    /// `[1 - s, s]`
    Complement,
    /// `[-s, s]`
    Signed,
}

struct Plan {
    threshold: f32,
    base: f32,
    probabilities: Probabilities,
}

/// What ONNX Runtime does with this node, if it is the layout we reproduce.
fn check(node: &pb::NodeProto) -> Result<Plan, String> {
    if class_count(node) != 2 {
        return Err("it declares fewer than two classes".into());
    }
    if node.output.len() != 2 || node.output.iter().any(String::is_empty) {
        return Err("it does not output both labels and probabilities".into());
    }
    if let Some(a) = TENSOR_ATTRS.iter().find(|n| attr(node, n).is_some()) {
        return Err(format!("it uses the attribute {a}"));
    }
    let ints = |n: &str| attr(node, n).map(|a| a.ints.as_slice()).unwrap_or(&[]);
    let class_ids = ints("class_ids");
    if class_ids.is_empty() || class_ids.iter().any(|&c| c != 0) {
        return Err("its leaf weights are not all on class 0".into());
    }
    // ONNX Runtime reads s only when some weight was reached: every leaf must carry one.
    let modes = attr(node, "nodes_modes")
        .map(|a| a.strings.as_slice())
        .unwrap_or(&[]);
    let (trees, ids) = (ints("nodes_treeids"), ints("nodes_nodeids"));
    let weighted: std::collections::HashSet<(i64, i64)> = ints("class_treeids")
        .iter()
        .copied()
        .zip(ints("class_nodeids").iter().copied())
        .collect();
    if modes.len() != trees.len() || modes.len() != ids.len() {
        return Err("its node attributes differ in length".into());
    }
    let bare_leaf = modes
        .iter()
        .zip(trees.iter().zip(ids))
        .any(|(m, (&t, &n))| m.as_slice() == b"LEAF" && !weighted.contains(&(t, n)));
    if bare_leaf {
        return Err("a leaf carries no weight".into());
    }
    let base = match attr(node, "base_values").map(|a| a.floats.as_slice()) {
        None | Some([]) => 0.0,
        Some([b]) => *b,
        Some(_) => return Err("it has two base values".into()),
    };
    let all_positive = !attr(node, "class_weights")
        .map(|a| a.floats.iter().any(|&w| w < 0.0))
        .unwrap_or(false);
    let transform = attr(node, "post_transform").map(|a| a.s.as_slice());
    let probabilities = match transform {
        Some(b"LOGISTIC") => Probabilities::Logistic,
        None | Some(b"NONE" | b"SOFTMAX" | b"SOFTMAX_ZERO") if all_positive => {
            Probabilities::Complement
        }
        None | Some(b"NONE" | b"SOFTMAX" | b"SOFTMAX_ZERO") => Probabilities::Signed,
        Some(other) => {
            return Err(format!(
                "its post_transform is {}",
                String::from_utf8_lossy(other)
            ))
        }
    };
    Ok(Plan {
        threshold: if all_positive { 0.5 } else { 0.0 },
        base,
        probabilities,
    })
}

fn set_attr(node: &mut pb::NodeProto, value: pb::AttributeProto) {
    node.attribute.retain(|a| a.name != value.name);
    node.attribute.push(value);
}

fn op(op_type: &str, name: String, input: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        input: input.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_owned()],
        name,
        op_type: op_type.to_owned(),
        ..Default::default()
    }
}

/// Push the rewritten classifier and the nodes that build its probabilities.
fn emit(
    mut node: pb::NodeProto,
    plan: &Plan,
    nodes: &mut Vec<pb::NodeProto>,
    initializers: &mut Vec<pb::TensorProto>,
) {
    let probabilities = node.output[1].clone();
    let name = |suffix: &str| format!("{probabilities}.vigil_binary_{suffix}");
    let scores = name("scores");
    node.output[1] = scores.clone();
    // tract cannot build a classifier with string labels: classify into 0 and 1, then
    // look the label up.
    let strings = node
        .attribute
        .iter()
        .position(|a| a.name == "classlabels_strings");
    let label_lookup = strings.map(|i| {
        let labels = node.attribute.remove(i).strings;
        let label = std::mem::replace(&mut node.output[0], name("label_index"));
        (labels, label)
    });
    if label_lookup.is_some() {
        set_attr(
            &mut node,
            pb::AttributeProto {
                name: "classlabels_int64s".into(),
                r#type: AttributeType::Ints as i32,
                ints: vec![0, 1],
                ..Default::default()
            },
        );
    }
    let label_index = node.output[0].clone();
    let n_ids = attr(&node, "class_ids").map_or(0, |a| a.ints.len());
    set_attr(
        &mut node,
        pb::AttributeProto {
            name: "class_ids".into(),
            r#type: AttributeType::Ints as i32,
            ints: vec![1; n_ids],
            ..Default::default()
        },
    );
    set_attr(
        &mut node,
        pb::AttributeProto {
            name: "base_values".into(),
            r#type: AttributeType::Floats as i32,
            floats: vec![plan.threshold, plan.base],
            ..Default::default()
        },
    );
    set_attr(
        &mut node,
        pb::AttributeProto {
            name: "post_transform".into(),
            r#type: AttributeType::String as i32,
            s: b"NONE".to_vec(),
            ..Default::default()
        },
    );
    nodes.push(node);
    if let Some((labels, label)) = label_lookup {
        let table = name("labels");
        initializers.push(pb::TensorProto {
            name: table.clone(),
            dims: vec![2],
            data_type: PbType::String as i32,
            string_data: labels,
            ..Default::default()
        });
        nodes.push(op("Gather", name("label"), &[&table, &label_index], &label));
    }

    let (index, one, s) = (name("index"), name("one"), name("s"));
    initializers.push(pb::TensorProto {
        name: index.clone(),
        dims: vec![1],
        data_type: PbType::Int64 as i32,
        int64_data: vec![1],
        ..Default::default()
    });
    let mut gather = op("Gather", name("gather"), &[&scores, &index], &s);
    gather.attribute.push(pb::AttributeProto {
        name: "axis".into(),
        r#type: AttributeType::Int as i32,
        i: 1,
        ..Default::default()
    });
    nodes.push(gather);
    let (p0, p1) = (name("p0"), name("p1"));
    let p1 = match plan.probabilities {
        Probabilities::Logistic => {
            let neg = name("neg");
            nodes.push(op("Neg", name("neg"), &[&s], &neg));
            nodes.push(op("Sigmoid", name("sigmoid0"), &[&neg], &p0));
            nodes.push(op("Sigmoid", name("sigmoid1"), &[&s], &p1));
            p1
        }
        Probabilities::Complement => {
            initializers.push(pb::TensorProto {
                name: one.clone(),
                dims: vec![1],
                data_type: PbType::Float as i32,
                float_data: vec![1.0],
                ..Default::default()
            });
            nodes.push(op("Sub", name("complement"), &[&one, &s], &p0));
            s
        }
        Probabilities::Signed => {
            nodes.push(op("Neg", name("neg"), &[&s], &p0));
            s
        }
    };
    let mut concat = op("Concat", name("concat"), &[&p0, &p1], &probabilities);
    concat.attribute.push(pb::AttributeProto {
        name: "axis".into(),
        r#type: AttributeType::Int as i32,
        i: 1,
        ..Default::default()
    });
    nodes.push(concat);
}

#[cfg(test)]
mod tests {
    //! tract against ONNX Runtime's answers, stored by tests/python/make_tree_oracles.py.

    use std::path::{Path, PathBuf};

    use super::*;
    use crate::backend::tract::TractSession;
    use crate::backend::{BackendError, ModelFile, Session};
    use crate::tensor::{Tensor, TensorData};

    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/trees")
            .join(name)
    }

    fn model_path(name: &str) -> PathBuf {
        if name == "breast_cancer" {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/breast_cancer/1/model.onnx")
        } else {
            data(&format!("{name}.onnx"))
        }
    }

    fn check_against_onnx_runtime(name: &str) {
        let oracle: serde_json::Value =
            serde_json::from_slice(&std::fs::read(data(&format!("{name}.json"))).unwrap()).unwrap();
        let file = ModelFile::read(&model_path(name)).unwrap();
        let session = TractSession::load(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
        let rows = oracle["inputs"].as_array().unwrap();
        let width = rows[0].as_array().unwrap().len();
        let values: Vec<f32> = rows
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter())
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let input = Tensor {
            name: file.signature.inputs[0].name.clone(),
            shape: vec![rows.len(), width],
            data: TensorData::Fp32(values),
        };
        let out = session.run(&[input]).unwrap();
        let labels: Vec<serde_json::Value> = match &out[0].data {
            TensorData::Int64(v) => v.iter().map(|&l| l.into()).collect(),
            TensorData::Bytes(b) => b
                .iter()
                .map(|l| String::from_utf8(l.to_vec()).unwrap().into())
                .collect(),
            other => panic!("{name}: labels are {:?}", other.datatype()),
        };
        assert_eq!(
            &labels,
            oracle["labels"].as_array().unwrap(),
            "{name}: labels"
        );
        let TensorData::Fp32(probabilities) = &out[1].data else {
            panic!("{name}: probabilities are not FP32");
        };
        assert_eq!(out[1].shape, [rows.len(), 2], "{name}");
        let want: Vec<f64> = oracle["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter())
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (i, (&got, &want)) in probabilities.iter().zip(&want).enumerate() {
            assert!(
                (got as f64 - want).abs() <= 1e-5,
                "{name}: row {} column {}: tract {got}, ONNX Runtime {want}",
                i / 2,
                i % 2
            );
        }
    }

    #[test]
    fn random_forest_matches_onnx_runtime() {
        check_against_onnx_runtime("rf_int");
        check_against_onnx_runtime("rf_strings");
        check_against_onnx_runtime("rf_logistic_base");
    }

    #[test]
    fn gradient_boosting_matches_onnx_runtime() {
        check_against_onnx_runtime("gb_logistic");
        check_against_onnx_runtime("gb_none");
        check_against_onnx_runtime("gb_softmax");
    }

    #[test]
    fn breast_cancer_sample_matches_onnx_runtime() {
        check_against_onnx_runtime("breast_cancer");
    }

    /// rf_int with one edit to its tree node.
    fn edited(edit: impl FnOnce(&mut pb::NodeProto)) -> ModelFile {
        let mut file = ModelFile::read(&data("rf_int.onnx")).unwrap();
        let graph = file.proto.graph.as_mut().unwrap();
        let node = graph
            .node
            .iter_mut()
            .find(|n| n.op_type == "TreeEnsembleClassifier")
            .unwrap();
        edit(node);
        file
    }

    fn floats(name: &str, floats: Vec<f32>) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            r#type: AttributeType::Floats as i32,
            floats,
            ..Default::default()
        }
    }

    #[test]
    fn refuses_what_it_does_not_reproduce() {
        let cases: Vec<(&str, ModelFile)> = vec![
            (
                "PROBIT",
                edited(|n| {
                    set_attr(
                        n,
                        pb::AttributeProto {
                            name: "post_transform".into(),
                            r#type: AttributeType::String as i32,
                            s: b"PROBIT".to_vec(),
                            ..Default::default()
                        },
                    )
                }),
            ),
            (
                "two base values",
                edited(|n| set_attr(n, floats("base_values", vec![0.1, 0.2]))),
            ),
            (
                "not all on class 0",
                edited(|n| {
                    let ids = n.attribute.iter_mut().find(|a| a.name == "class_ids");
                    ids.unwrap().ints[0] = 1;
                }),
            ),
            (
                "carries no weight",
                edited(|n| {
                    for a in n.attribute.iter_mut() {
                        if a.name.starts_with("class_") {
                            a.ints.pop();
                            a.floats.pop();
                        }
                    }
                }),
            ),
        ];
        for (why, file) in cases {
            match TractSession::load(&file) {
                Err(BackendError::Unsupported(msg)) => {
                    assert!(
                        msg.contains("TreeEnsembleClassifier") && msg.contains("ONNX Runtime"),
                        "{why}: {msg}"
                    );
                    assert!(msg.contains(why), "{why}: {msg}");
                }
                Err(e) => panic!("{why}: refused for another reason: {e}"),
                Ok(_) => panic!("{why}: served"),
            }
        }
    }
}
