//! Unit tests of the MLflow source's parsing and path checks (no server needed; the
//! real MLflow is exercised by tests/mlflow.rs).

use serde_json::Value;

use super::client::{local_entries, location, parse_aliases, proxy_entries, Entry, Location};
use super::download::onnx_data_file;
use super::roles::valid_model_name;
use crate::registry::cache::open_no_follow;

#[test]
fn onnx_flavour_is_found_and_others_refused() {
    let onnx = "artifact_path: x\nflavors:\n  onnx:\n    code: null\n    data: net.onnx\n    providers:\n    - CPUExecutionProvider\n  python_function:\n    data: net.onnx\nmlflow_version: 3.17.2\n";
    assert_eq!(onnx_data_file(onnx).unwrap(), "net.onnx");
    let default = "flavors:\n  onnx:\n    onnx_version: 1.23.2\n";
    assert_eq!(onnx_data_file(default).unwrap(), "model.onnx");
    let sk = "flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n  sklearn:\n    pickled_model: model.pkl\n";
    let e = onnx_data_file(sk).unwrap_err();
    assert!(
        e.contains("not an ONNX model") && e.contains("sklearn"),
        "{e}"
    );
    assert!(onnx_data_file("run_id: x\n")
        .unwrap_err()
        .contains("no flavors"));
    assert!(onnx_data_file("flavors:\n  onnx:\n    data: ../../etc/passwd\n").is_err());
}

#[test]
fn artifact_uris_map_to_locations() {
    assert_eq!(
        location("mlflow-artifacts:/0/models/m-1/artifacts").unwrap(),
        Location::Proxy("0/models/m-1/artifacts".into())
    );
    assert_eq!(
        location("mlflow-artifacts://mlflow:5000/0/models/m-1/artifacts").unwrap(),
        Location::Proxy("0/models/m-1/artifacts".into())
    );
    assert_eq!(
        location("file:///srv/mlruns/0/x/artifacts").unwrap(),
        Location::Local("/srv/mlruns/0/x/artifacts".into())
    );
    assert!(location("s3://bucket/x")
        .unwrap_err()
        .contains("--serve-artifacts"));
}

#[test]
fn aliases_and_names() {
    let v: Value = serde_json::json!([{"alias": "champion", "version": "3"}, {"alias": "challenger", "version": 4}, {"alias": "bad", "version": "x"}]);
    let a = parse_aliases(&v);
    assert_eq!(a.get("champion"), Some(&3));
    assert_eq!(a.get("challenger"), Some(&4));
    assert_eq!(a.len(), 2);
    assert!(valid_model_name("iris"));
    for bad in ["", "..", "a/b", ".hidden"] {
        assert!(!valid_model_name(bad), "{bad}");
    }
}

#[test]
fn listings_that_lead_out_of_the_cache_are_refused_by_name() {
    let listing = |paths: &[&str]| serde_json::json!({"files": paths.iter().map(|p| serde_json::json!({"path": p, "is_dir": false, "file_size": 3})).collect::<Vec<_>>()});
    let ok = proxy_entries("sub", &listing(&["model.onnx", "sub/w.bin"])).unwrap();
    assert_eq!(
        ok,
        vec![
            Entry {
                path: "sub/model.onnx".into(),
                is_dir: false,
                size: Some(3)
            },
            Entry {
                path: "sub/w.bin".into(),
                is_dir: false,
                size: Some(3)
            },
        ]
    );
    for bad in [
        "..",
        "../../etc/passwd",
        "a/../../b",
        "/etc/passwd",
        "a//b",
        "./x",
        "",
    ] {
        let (path, why) = proxy_entries("", &listing(&["MLmodel", bad])).unwrap_err();
        assert_eq!(path, bad, "{why}");
    }
    // Sizes as numbers or (proto int64) strings.
    let v = serde_json::json!({"files": [{"path": "a", "file_size": "12"}, {"path": "d", "is_dir": true}]});
    let e = proxy_entries("", &v).unwrap();
    assert_eq!(e[0].size, Some(12));
    assert!(e[1].is_dir && e[1].size.is_none());
}

#[test]
fn local_stores_refuse_symbolic_links_and_keep_sizes() {
    let dir = std::env::temp_dir().join(format!("vigil-mlflow-links-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("MLmodel"), "flavors:\n").unwrap();
    std::fs::write(dir.join("sub/w.bin"), [0u8; 7]).unwrap();
    let mut e = local_entries(&dir, "").unwrap();
    e.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(
        e[0],
        Entry {
            path: "MLmodel".into(),
            is_dir: false,
            size: Some(9)
        }
    );
    assert_eq!(
        e[1],
        Entry {
            path: "sub".into(),
            is_dir: true,
            size: None
        }
    );
    assert_eq!(local_entries(&dir, "sub").unwrap()[0].size, Some(7));

    std::os::unix::fs::symlink("/etc/hostname", dir.join("sub/model.onnx")).unwrap();
    let err = local_entries(&dir, "sub").unwrap_err().to_string();
    assert!(
        err.contains("'sub/model.onnx'") && err.contains("symbolic link"),
        "{err}"
    );
    std::fs::remove_file(dir.join("sub/model.onnx")).unwrap();
    std::os::unix::fs::symlink("/etc", dir.join("linked")).unwrap();
    let err = local_entries(&dir, "").unwrap_err().to_string();
    assert!(
        err.contains("'linked'") && err.contains("symbolic link"),
        "{err}"
    );
    // Reading through a link is refused even if one appears after the listing.
    assert!(open_no_follow(&dir.join("linked")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// While MLflow is down its errors change wording (a pooled connection closed as it
/// stopped, then connections refused): one state, one log line. Another problem with a
/// model while MLflow answers, or MLflow going down, is logged. (Seen at load 15: two
/// "cannot follow the model" lines for one stop of MLflow, tests/mlflow.rs.)
#[test]
fn a_new_wording_of_the_same_outage_is_not_a_new_failure() {
    use super::{is_new_failure, Failing};
    use std::time::{Duration, Instant};
    let failing = |message: &str, registry_down: bool| Failing {
        message: message.to_string(),
        delay: Duration::from_secs(1),
        retry_at: Instant::now(),
        roles: None,
        registry_down,
    };
    let closed = "MLflow at http://m is unreachable: connection closed before message completed";
    let refused = "MLflow at http://m is unreachable: tcp connect error: Connection refused";
    assert!(is_new_failure(None, closed, true));
    let down = failing(closed, true);
    assert!(!is_new_failure(Some(&down), refused, true));
    assert!(!is_new_failure(Some(&down), closed, true));
    // MLflow answers again, the model still fails: a change of state.
    assert!(is_new_failure(Some(&down), "not an ONNX model", false));
    let bad = failing("not an ONNX model", false);
    assert!(!is_new_failure(Some(&bad), "not an ONNX model", false));
    assert!(is_new_failure(Some(&bad), "no champion alias", false));
    assert!(is_new_failure(Some(&bad), refused, true));
}
