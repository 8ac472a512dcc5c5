//! deploy/ checked offline: the Kubernetes manifests against the Kubernetes schemas
//! (kubernetes-validate, strict), the KServe and PodMonitor objects structurally (their
//! containers as core Pods), probes, grace periods, volumes (the payload log's shared
//! one, each pod's subdirectory from the downward API), and every container's
//! arguments accepted by this build of `vigil serve` (tests/python/deploy_check.py).

mod common;

use std::process::Command;

use common::{python, root};

#[test]
fn deploy_manifests_validate_and_match_the_binary() {
    let out = Command::new(python())
        .arg(root().join("tests/python/deploy_check.py"))
        .arg(env!("CARGO_BIN_EXE_vigil"))
        .output()
        .expect("run deploy_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.contains("6 core resources valid"), "{summary}");
    assert!(
        summary.contains("payload log on a shared volume"),
        "{summary}"
    );
    assert!(summary.contains("KServe"), "{summary}");
}
