//! The unmodified Python `tritonclient.http` client against a real vigil, on both
//! engines, with onnxruntime in Python as the oracle (tests/python/tritonclient_check.py).

mod common;

use std::process::Command;

use common::{python, root, Engine, Vigil};

fn run(repo: &str, engine: Engine) {
    let repository = root().join(repo);
    let v = Vigil::start(&repository, engine, &[]);
    let name = match engine {
        Engine::Tract => "tract",
        Engine::Ort => "ort",
    };
    let out = Command::new(python())
        .arg(root().join("tests/python/tritonclient_check.py"))
        .arg(&v.addr)
        .arg(&repository)
        .arg(name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tritonclient check failed on {name}:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("inference checks passed"), "{stdout}");
    println!("{stdout}");
}

#[test]
fn tritonclient_on_ort() {
    run("models", Engine::Ort);
}

#[test]
fn tritonclient_on_tract() {
    run("models", Engine::Tract);
}

#[test]
fn tritonclient_every_datatype() {
    run("tests/data/repo", Engine::Ort);
    run("tests/data/repo", Engine::Tract);
}
