//! Routing on the request path: the table load (one `ArcSwap` read) and the choice of a
//! version, for a model with only a stable version and for a 10 % canary split (keyed and
//! unkeyed). Run `cargo bench --bench routing`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use vigil::backend::{BackendChoice, BackendOptions, Backends};
use vigil::config::{ModelControl, RetrainConfig};
use vigil::metrics::Metrics;
use vigil::serving::reload::Reloader;
use vigil::serving::{Server, ServerOptions, WorkerPool};

fn routing(c: &mut Criterion) {
    let state = std::env::temp_dir().join(format!("vigil-bench-routing-{}", std::process::id()));
    // A copy of the sample iris and mlp, iris with a 10 % canary (its config loads both).
    let models = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let repository = state.join("repo");
    for (model, version) in [("iris", 1), ("iris", 2), ("mlp", 1)] {
        let dir = repository.join(model).join(version.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            models
                .join(model)
                .join(version.to_string())
                .join("model.onnx"),
            dir.join("model.onnx"),
        )
        .unwrap();
    }
    std::fs::write(
        repository.join("iris/config.toml"),
        "[rollout]\nstable = 1\ncanary = 2\nweight = 10\n",
    )
    .unwrap();
    let backends = Backends::new(BackendOptions {
        default: BackendChoice::Tract,
        ort_library: None,
        parallelism: 1,
    })
    .unwrap();
    let server = Arc::new(
        Server::new(
            backends,
            WorkerPool::new(1, 16),
            Arc::new(Metrics::new()),
            ServerOptions {
                repository: repository.clone(),
                state_dir: state.clone(),
                max_shadow_in_flight: 4,
                retrain_defaults: RetrainConfig::default(),
                payload: Default::default(),
            },
        )
        .unwrap(),
    );
    let reloader = Reloader::new(
        server.clone(),
        repository,
        ModelControl::Explicit,
        &["iris".to_string(), "mlp".to_string()],
    );
    reloader.initial_load().unwrap();
    assert_eq!(server.table().models["iris"].canary, Some(2));
    let mut g = c.benchmark_group("route");
    g.bench_function("stable only (mlp)", |b| {
        b.iter(|| server.route(black_box("mlp"), None, |_| None).unwrap())
    });
    g.bench_function("canary split, unkeyed (iris)", |b| {
        b.iter(|| server.route(black_box("iris"), None, |_| None).unwrap())
    });
    g.bench_function("canary split, sticky key (iris)", |b| {
        b.iter(|| {
            server
                .route(black_box("iris"), None, |_| Some(b"user-1234".to_vec()))
                .unwrap()
        })
    });
    g.bench_function("pinned version (iris v2)", |b| {
        b.iter(|| server.route(black_box("iris"), Some(2), |_| None).unwrap())
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&state);
}

criterion_group!(benches, routing);
criterion_main!(benches);
