//! The V2 codec on the request path: JSON and binary request decoding and response
//! encoding, for a one-row request and a 64-row batch. Run `cargo bench --bench codec`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vigil::backend::ModelSignature;
use vigil::http::v2::{decode_request, encode_response};
use vigil::tensor::spec::TensorSpec;
use vigil::tensor::{DataType, Tensor, TensorData};

/// The model the bodies are for: one FP32 input `X` of any rows and columns.
fn signature() -> ModelSignature {
    ModelSignature {
        inputs: vec![TensorSpec {
            name: "X".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, -1],
        }],
        outputs: Vec::new(),
    }
}

fn json_body(rows: usize, features: usize) -> Vec<u8> {
    let data: Vec<f32> = (0..rows * features)
        .map(|i| (i % 97) as f32 * 0.173 - 4.2)
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "id": "bench",
        "inputs": [{"name": "X", "shape": [rows, features], "datatype": "FP32", "data": data}]
    }))
    .unwrap()
}

fn binary_body(rows: usize, features: usize) -> (Vec<u8>, usize) {
    let header = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "X", "shape": [rows, features], "datatype": "FP32",
                    "parameters": {"binary_data_size": rows * features * 4}}]
    }))
    .unwrap();
    let mut body = header.clone();
    for i in 0..rows * features {
        body.extend(((i % 97) as f32 * 0.173).to_le_bytes());
    }
    (body, header.len())
}

fn outputs(rows: usize, classes: usize) -> Vec<Tensor> {
    vec![
        Tensor {
            name: "label".into(),
            shape: vec![rows],
            data: TensorData::Int64((0..rows as i64).collect()),
        },
        Tensor {
            name: "probabilities".into(),
            shape: vec![rows, classes],
            data: TensorData::Fp32((0..rows * classes).map(|i| 1.0 / (1 + i) as f32).collect()),
        },
    ]
}

fn codec(c: &mut Criterion) {
    for (rows, features) in [(1usize, 4usize), (64, 32)] {
        let mut g = c.benchmark_group(format!("{rows}x{features}"));
        g.throughput(Throughput::Elements((rows * features) as u64));
        let sig = signature();
        let json = json_body(rows, features);
        g.bench_function("decode json", |b| {
            b.iter(|| decode_request(black_box(&json), None, &sig, usize::MAX).unwrap())
        });
        let (bin, hlen) = binary_body(rows, features);
        g.bench_function("decode binary", |b| {
            b.iter(|| decode_request(black_box(&bin), Some(hlen), &sig, usize::MAX).unwrap())
        });
        let outs = outputs(rows, 3);
        let json_out: Vec<(&Tensor, bool)> = outs.iter().map(|t| (t, false)).collect();
        g.bench_function("encode json", |b| {
            b.iter(|| encode_response("m", 1, Some("bench"), black_box(&json_out)))
        });
        let bin_out: Vec<(&Tensor, bool)> = outs.iter().map(|t| (t, true)).collect();
        g.bench_function("encode binary", |b| {
            b.iter(|| encode_response("m", 1, Some("bench"), black_box(&bin_out)))
        });
        g.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
