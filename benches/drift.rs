//! Drift accumulation on the request path (`Monitor::observe`): catches a regression in
//! the per-value cost (target ≤ 50 ns per feature value, no allocation per row). And the
//! exact KS test a scored window pays per numeric feature (`drift_ks`): the lattice count
//! of unequal samples (O(n1·n2) cells when the samples differ a lot) and the O(n) path of
//! equal ones.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vigil::config::DriftConfig;
use vigil::metrics::Metrics;
use vigil::monitor::profile::{Column, Profile, ProfileOptions};
use vigil::monitor::{Monitor, MonitorSetup, Scorer};
use vigil::tensor::spec::TensorSpec;
use vigil::tensor::{DataType, Tensor, TensorData};

fn monitor(features: usize) -> std::sync::Arc<Monitor> {
    let inputs = [TensorSpec {
        name: "X".into(),
        datatype: DataType::Fp32,
        shape: vec![-1, features as i64],
    }];
    let outputs = [TensorSpec {
        name: "y".into(),
        datatype: DataType::Int64,
        shape: vec![-1],
    }];
    let columns = (0..features)
        .map(|j| Column {
            name: format!("f{j}"),
            input: "X".into(),
            index: j,
            values: (0..2000)
                .map(|i| ((i * 7919 + j * 13) % 1000) as f64 / 100.0)
                .collect(),
        })
        .collect();
    let profile = Profile::build(columns, 2000, "bench".into(), &ProfileOptions::default());
    Monitor::new(MonitorSetup {
        model: "bench",
        version: 1,
        inputs: &inputs,
        outputs: &outputs,
        // Windows large enough that the measured loop never closes one.
        config: DriftConfig {
            window_rows: Some(u64::MAX / 2),
            ..DriftConfig::default()
        },
        reference_json: Some(Ok(serde_json::to_vec(&profile).unwrap())),
        metrics: Metrics::new().drift(),
        scorer: Scorer::start(),
        events: None,
    })
}

fn batch(rows: usize, features: usize) -> (Vec<Tensor>, Vec<Tensor>) {
    let x: Vec<f32> = (0..rows * features)
        .map(|i| (i % 997) as f32 / 97.0)
        .collect();
    (
        vec![Tensor {
            name: "X".into(),
            shape: vec![rows, features],
            data: TensorData::Fp32(x),
        }],
        vec![Tensor {
            name: "y".into(),
            shape: vec![rows],
            data: TensorData::Int64(vec![1; rows]),
        }],
    )
}

fn observe(c: &mut Criterion) {
    let mut g = c.benchmark_group("drift_observe");
    for (rows, features) in [(1, 4), (64, 4), (64, 32)] {
        let m = monitor(features);
        let (inputs, outputs) = batch(rows, features);
        // Throughput in input feature values (outputs ride along: one more per row).
        g.throughput(Throughput::Elements((rows * features) as u64));
        g.bench_function(format!("{rows}x{features}"), |b| {
            b.iter(|| m.observe(black_box(&inputs), black_box(&outputs)))
        });
    }
    g.finish();
}

/// `n` values: a seeded uniform sample on [shift, shift + 1).
fn uniform(seed: u64, n: usize, shift: f64) -> Vec<f64> {
    let mut rng = vigil::rng::Rng::new(seed);
    (0..n)
        .map(|_| shift + (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
        .collect()
}

fn ks(c: &mut Criterion) {
    let mut g = c.benchmark_group("drift_ks");
    g.sample_size(10);
    // The reference sample of `vigil profile` (5000) against windows of the sizes a
    // window's sample takes: 1000 rows, the default cap, the largest cap.
    for (n, shift, label) in [
        (1000, 0.0, "5000x1000_same"),
        (1000, 0.5, "5000x1000_shifted"),
        (5000, 0.5, "5000x5000_shifted"),
        (10_000, 0.0, "5000x10000_same"),
        (10_000, 0.5, "5000x10000_shifted"),
    ] {
        let reference = uniform(1, 5000, 0.0);
        let window = uniform(2, n, shift);
        g.bench_function(label, |b| {
            b.iter_batched(
                || (reference.clone(), window.clone()),
                |(mut a, mut w)| vigil::monitor::stats::ks::ks_2samp(&mut a, &mut w),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, observe, ks);
criterion_main!(benches);
