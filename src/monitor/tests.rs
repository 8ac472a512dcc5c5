//! The monitor end to end: plans, fleet counters, categorical drift, a reference built
//! from served rows.

use super::profile::{Column, Kind};
use super::*;
use crate::tensor::{DataType, TensorData};

fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype,
        shape: shape.to_vec(),
    }
}

#[test]
fn plans_for_common_shapes() {
    let p = plan(&[spec("X", DataType::Fp32, &[-1, 3])]);
    assert_eq!(
        p.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["f0", "f1", "f2"]
    );
    let p = plan(&[spec("img", DataType::Fp32, &[-1, 1, 28, 28])]);
    assert_eq!(p.len(), 4);
    assert_eq!(p[1].name, "img.std");
    let p = plan(&[
        spec("label", DataType::Int64, &[-1]),
        spec("probabilities", DataType::Fp32, &[-1, 2]),
    ]);
    assert_eq!(
        p.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["label", "probabilities.f0", "probabilities.f1"]
    );
    assert!(plan(&[spec("s", DataType::Bytes, &[-1])]).is_empty());
}

#[test]
fn fleet_counters_count_every_row_per_reference_bin() {
    // A numeric feature (0..100) and a categorical one (0, 1, 2).
    let col = |index: usize, values: Vec<f64>| Column {
        name: format!("f{index}"),
        input: "X".into(),
        index,
        values,
    };
    let profile = Profile::build(
        vec![
            col(0, (0..100).map(f64::from).collect()),
            col(1, (0..99).map(|i| f64::from(i % 3)).collect()),
        ],
        100,
        "reference.json".into(),
        &ProfileOptions::default(),
    );
    assert_eq!(profile.features[1].kind, Kind::Categorical);
    let metrics = crate::metrics::Metrics::new();
    let m = Monitor::new(MonitorSetup {
        model: "m",
        version: 3,
        inputs: &[spec("X", DataType::Fp32, &[-1, 2])],
        outputs: &[],
        config: DriftConfig {
            window_rows: Some(40),
            ..DriftConfig::default()
        },
        reference_json: Some(Ok(serde_json::to_vec(&profile).unwrap())),
        metrics: metrics.drift(),
        scorer: Scorer::start(),
        events: None,
    });
    // 70 rows (a window closes at 40 and its counts carry over), one NaN, one unseen
    // category.
    let mut x = Vec::new();
    for i in 0..70u32 {
        let f0 = if i == 5 {
            f32::NAN
        } else {
            (i * 7 % 130) as f32
        };
        let f1 = if i == 9 { 7.0 } else { (i % 2) as f32 };
        x.extend([f0, f1]);
    }
    for chunk in x.chunks(20) {
        m.observe(
            &[Tensor {
                name: "X".into(),
                shape: vec![chunk.len() / 2, 2],
                data: TensorData::Fp32(chunk.to_vec()),
            }],
            &[],
        );
    }
    m.close_if_due();
    let text = metrics.render();
    let count = |feature: &str, bin: &str| -> u64 {
        let key = format!(
            "vigil_drift_bin_rows_total{{bin=\"{bin}\",feature=\"{feature}\",model=\"m\",side=\"input\",version=\"3\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .unwrap_or_else(|| panic!("no series {key}"))
            .parse()
            .unwrap()
    };
    let edges = &profile.features[0].edges;
    let mut want = vec![0u64; edges.len() + 1];
    for i in 0..70u32 {
        if i != 5 {
            want[stats::bin_of(edges, f64::from(i * 7 % 130))] += 1;
        }
    }
    for (b, w) in want.iter().enumerate() {
        assert_eq!(count("f0", &b.to_string()), *w, "bin {b}");
    }
    assert_eq!(count("f0", "nan"), 1);
    assert_eq!(count("f1", "0"), 35);
    assert_eq!(count("f1", "1"), 34);
    assert_eq!(count("f1", "2"), 0);
    assert_eq!(count("f1", "other"), 1);
    assert!(text.contains(
        "vigil_drift_reference_proportion{bin=\"2\",feature=\"f1\",model=\"m\",side=\"input\",version=\"3\"} 0.3333"
    ));
    // The series go with the version.
    metrics.remove_version("m", 3);
    assert!(!metrics.render().contains("vigil_drift_bin_rows_total{"));
}

/// A monitor of one categorical input `c`, whose reference has categories 0, 1, 2
/// (shares 0.5, 0.3, 0.198) and a rare 3 (0.002), closing a window every 1000 rows.
fn categorical_monitor(
    metrics: &crate::metrics::Metrics,
    version: u64,
) -> (Arc<Monitor>, Vec<f64>) {
    let shares = vec![0.5, 0.3, 0.198, 0.002];
    let values: Vec<f64> = shares
        .iter()
        .enumerate()
        .flat_map(|(c, s)| std::iter::repeat_n(c as f64, (s * 10_000.0_f64).round() as usize))
        .collect();
    let profile = Profile::build(
        vec![Column {
            name: "c".into(),
            input: "X".into(),
            index: 0,
            values,
        }],
        10_000,
        "reference.json".into(),
        &ProfileOptions::default(),
    );
    assert_eq!(profile.features[0].kind, Kind::Categorical);
    assert_eq!(profile.features[0].proportions, shares);
    let m = Monitor::new(MonitorSetup {
        model: "cat",
        version,
        inputs: &[spec("X", DataType::Int64, &[-1, 1])],
        outputs: &[],
        config: DriftConfig {
            window_rows: Some(1000),
            ..DriftConfig::default()
        },
        reference_json: Some(Ok(serde_json::to_vec(&profile).unwrap())),
        metrics: metrics.drift(),
        scorer: Scorer::start(),
        events: None,
    });
    (m, shares)
}

/// Sends `windows` windows of 1000 rows: `unseen` rows of category 9 (which the
/// reference never saw), the others drawn from the reference's shares. Returns the
/// windows that drifted once all are scored.
fn categorical_windows(
    metrics: &crate::metrics::Metrics,
    m: &Arc<Monitor>,
    shares: &[f64],
    windows: u64,
    unseen: usize,
    seed: u64,
    scored: u64,
) -> u64 {
    let mut rng = Rng::new(seed);
    for _ in 0..windows {
        let mut rows: Vec<i64> = (0..1000 - unseen)
            .map(|_| {
                let mut u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                let mut c = shares.len() - 1;
                for (i, s) in shares.iter().enumerate() {
                    if u < *s {
                        c = i;
                        break;
                    }
                    u -= s;
                }
                c as i64
            })
            .collect();
        rows.extend(std::iter::repeat_n(9, unseen));
        m.observe(
            &[Tensor {
                name: "X".into(),
                shape: vec![rows.len(), 1],
                data: TensorData::Int64(rows),
            }],
            &[],
        );
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while m.report().windows < scored {
        assert!(
            Instant::now() < deadline,
            "windows not scored: {:?}",
            m.report().windows
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let r = m.report();
    let f = &r.last_window.as_ref().unwrap().features[0];
    // At least the planted rows (a learned reference may also miss a rare category).
    assert!(
        f.unseen_share.is_some_and(|u| u >= unseen as f64 / 1000.0),
        "{:?}",
        f.unseen_share
    );
    let key = format!(
        "vigil_drift_windows_total{{model=\"cat\",result=\"drift\",version=\"{}\"}} ",
        m.version
    );
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .map_or(0, |v| v.parse().unwrap())
}

/// Stationary categorical traffic with 2 rows in 1000 of a category the reference never
/// saw: the chi-square (alpha 0.05, one feature) flags about 5 % of windows, not every
/// window; 10 % of rows unseen flags every window.
#[test]
fn categorical_drift_does_not_cry_wolf() {
    let metrics = crate::metrics::Metrics::new();
    let (m, shares) = categorical_monitor(&metrics, 1);
    let windows = 200;
    let flagged = categorical_windows(&metrics, &m, &shares, windows, 2, 42, windows);
    let rate = flagged as f64 / windows as f64;
    println!("stationary categorical traffic, 2 unseen rows per 1000: {flagged} of {windows} windows flagged ({rate:.3})");
    // alpha = 0.05; the margin is 3 binomial standard deviations (0.046).
    assert!(
        rate <= 0.05 + 3.0 * (0.05f64 * 0.95 / windows as f64).sqrt(),
        "{flagged} of {windows} windows flagged"
    );
    let (m, shares) = categorical_monitor(&metrics, 2);
    assert_eq!(
        categorical_windows(&metrics, &m, &shares, 5, 100, 43, 5),
        5,
        "10 % unseen must flag"
    );
}

/// Stationary traffic against references learned from the first 1000 rows served (no
/// reference.json): the reference is a sample as small as a window, so the scorer
/// compares two samples. Goodness of fit against the learned shares flagged 33 % of
/// windows. Each window is tested against its model's one reference, so the windows of
/// one model are not independent: 60 models (references) of 10 windows each.
#[test]
fn a_learned_categorical_reference_does_not_cry_wolf() {
    let shares = [0.42, 0.3, 0.2, 0.05, 0.02, 0.008, 0.002];
    let (models, per_model) = (60u64, 10u64);
    let mut flagged = 0;
    for seed in 0..models {
        let metrics = crate::metrics::Metrics::new();
        let m = Monitor::new(MonitorSetup {
            model: "cat",
            version: 3,
            inputs: &[spec("X", DataType::Int64, &[-1, 1])],
            outputs: &[],
            config: DriftConfig {
                reference_rows: 1000,
                window_rows: Some(1000),
                ..DriftConfig::default()
            },
            reference_json: None,
            metrics: metrics.drift(),
            scorer: Scorer::start(),
            events: None,
        });
        // The first 1000 rows become the reference; `per_model` windows follow.
        flagged += categorical_windows(
            &metrics,
            &m,
            &shares,
            per_model + 1,
            0,
            100 + seed,
            per_model,
        );
        let r = m.report();
        assert_eq!(r.reference.as_ref().map(|i| i.rows), Some(1000), "{r:?}");
    }
    let scored = models * per_model;
    let rate = flagged as f64 / scored as f64;
    println!(
        "learned references, stationary traffic: {flagged} of {scored} windows flagged ({rate:.3})"
    );
    // alpha = 0.05; the margin is 3 binomial standard deviations of the 60 references.
    assert!(
        rate <= 0.05 + 3.0 * (0.05f64 * 0.95 / models as f64).sqrt(),
        "{flagged} of {scored} windows flagged"
    );
}

#[test]
fn accumulates_rows_without_a_reference_then_builds_one() {
    let (tx, rx) = crossbeam_channel::bounded(4);
    let m = Monitor::new(MonitorSetup {
        model: "m",
        version: 1,
        inputs: &[spec("X", DataType::Fp32, &[-1, 2])],
        outputs: &[spec("y", DataType::Int64, &[-1])],
        config: DriftConfig {
            reference_rows: 100,
            window_rows: Some(50),
            ..DriftConfig::default()
        },
        reference_json: None,
        metrics: crate::metrics::Metrics::new().drift(),
        scorer: Scorer::start(),
        events: Some(tx),
    });
    let batch = |shift: f32, k: usize| {
        let x: Vec<f32> = (0..100)
            .map(|i| ((i * 37 + k * 11) % 100) as f32 / 10.0 + shift)
            .collect();
        (
            vec![Tensor {
                name: "X".into(),
                shape: vec![50, 2],
                data: TensorData::Fp32(x),
            }],
            vec![Tensor {
                name: "y".into(),
                shape: vec![50],
                data: TensorData::Int64((0..50).map(|i| i % 3).collect()),
            }],
        )
    };
    for k in 0..2 {
        let (i, o) = batch(0.0, k);
        m.observe(&i, &o);
    }
    let r = m.report();
    assert_eq!(r.state, "monitoring");
    assert_eq!(
        r.reference.as_ref().unwrap().source,
        "first 100 rows served"
    );
    // Far-shifted windows drift.
    for k in 0..3 {
        let (i, o) = batch(50.0, k);
        m.observe(&i, &o);
    }
    let event = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("a drift event");
    assert_eq!((event.model.as_str(), event.version), ("m", 1));
    assert!(event.window.drifted);
    assert_eq!(event.window.features.len(), 2);
    assert!(event
        .window
        .features
        .iter()
        .all(|f| f.drifted && f.psi.unwrap() > 1.0));
}

/// A monitor of one numeric feature (reference: 0..1000) on a scorer whose jobs wait
/// until the test runs them.
fn paused_monitor(config: DriftConfig) -> (Arc<Monitor>, crossbeam_channel::Receiver<scorer::Job>) {
    let profile = Profile::build(
        vec![Column {
            name: "f0".into(),
            input: "X".into(),
            index: 0,
            values: (0..1000).map(f64::from).collect(),
        }],
        1000,
        "reference.json".into(),
        &ProfileOptions::default(),
    );
    let (scorer, jobs) = Scorer::paused();
    let m = Monitor::new(MonitorSetup {
        model: "m",
        version: 1,
        inputs: &[spec("X", DataType::Fp32, &[-1, 1])],
        outputs: &[],
        config,
        reference_json: Some(Ok(serde_json::to_vec(&profile).unwrap())),
        metrics: crate::metrics::Metrics::new().drift(),
        scorer,
        events: None,
    });
    (m, jobs)
}

fn rows(m: &Arc<Monitor>, n: usize, offset: usize) {
    m.observe(
        &[Tensor {
            name: "X".into(),
            shape: vec![n, 1],
            data: TensorData::Fp32((0..n).map(|i| ((i + offset) % 1000) as f32).collect()),
        }],
        &[],
    );
}

/// `window_rows` written alone: every window holds exactly that many rows, also when a
/// batch straddles the boundary (the rest opens the next window).
#[test]
fn row_exact_windows_split_a_batch_at_the_boundary() {
    let (m, jobs) = paused_monitor(DriftConfig {
        window_rows: Some(100),
        ..DriftConfig::default()
    });
    rows(&m, 60, 0);
    rows(&m, 60, 60);
    assert_eq!(m.report().window_rows, 20);
    rows(&m, 250, 120);
    assert_eq!(m.report().window_rows, 70);
    let mut scored = Vec::new();
    while let Ok(job) = jobs.try_recv() {
        job();
        scored.push(m.report().last_window.unwrap().rows);
    }
    assert_eq!(scored, [100, 100, 100]);
}

/// With an interval, a window closes at `window_rows` only once the interval has
/// passed and the version's previous window has been scored: until then it keeps every
/// row in its counts, and its sample stays a uniform draw of at most the cap.
#[test]
fn a_window_waits_for_its_predecessor_to_be_scored() {
    let (m, jobs) = paused_monitor(DriftConfig {
        min_window_interval: Some(1e-9),
        max_window_sample: 300,
        ..DriftConfig::default()
    });
    rows(&m, 1000, 0);
    assert_eq!(
        m.report().window_rows,
        0,
        "the first window closes at 1000 rows"
    );
    rows(&m, 2500, 0);
    rows(&m, 1500, 0);
    assert_eq!(
        m.report().window_rows,
        4000,
        "the second stays open while the first waits"
    );
    assert_eq!(jobs.len(), 1);
    jobs.recv().unwrap()();
    let first = m.report().last_window.unwrap();
    assert_eq!((first.rows, first.features[0].sample), (1000, 300));
    // Scored: the next request (or tick) closes the second window with every row.
    rows(&m, 10, 0);
    assert_eq!(m.report().window_rows, 0);
    jobs.recv().unwrap()();
    let second = m.report().last_window.unwrap();
    let f = &second.features[0];
    assert_eq!((second.rows, f.rows, f.sample), (4010, 4010, 300));
    assert_eq!(f.window_counts.iter().sum::<u64>(), 4010);
    // A job dropped unrun (a full queue, a scorer gone) does not hold windows open.
    rows(&m, 1000, 0);
    assert_eq!(jobs.len(), 1);
    drop(jobs.recv().unwrap());
    rows(&m, 1000, 0);
    assert_eq!(m.report().window_rows, 0, "closed again after the drop");
}

/// The interval holds a window open however many rows come; the monitor's clock (the
/// scorer's tick) closes it once the interval has passed.
#[test]
fn the_interval_holds_a_burst_in_one_window() {
    let (m, jobs) = paused_monitor(DriftConfig {
        min_window_interval: Some(0.2),
        ..DriftConfig::default()
    });
    let opened = Instant::now();
    rows(&m, 5000, 0);
    rows(&m, 5000, 0);
    if opened.elapsed().as_secs_f64() < 0.2 {
        assert_eq!(m.report().window_rows, 10_000, "closed before the interval");
    }
    while opened.elapsed().as_secs_f64() < 0.25 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    m.close_if_due();
    assert_eq!(m.report().window_rows, 0);
    jobs.recv().unwrap()();
    assert_eq!(m.report().last_window.unwrap().rows, 10_000);
}
