//! The committed generated code must be what the pinned Thrift compiler
//! (0.17, matching the `thrift` crate pin) produces from the IDL.

use std::path::Path;
use std::process::Command;

#[test]
fn committed_echo_code_matches_the_compiler_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let idl = root.join("examples/thrift/echo.thrift");
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gen/echo.rs");
    let out = tempfile::tempdir().unwrap();
    let version = Command::new("thrift")
        .arg("--version")
        .output()
        .expect("the Thrift compiler (Debian package thrift-compiler) must be installed");
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains("0.17."),
        "expected Thrift 0.17, found {version}"
    );
    let status = Command::new("thrift")
        .args(["--gen", "rs", "-out"])
        .arg(out.path())
        .arg(&idl)
        .status()
        .unwrap();
    assert!(status.success(), "thrift --gen rs failed");
    let fresh = std::fs::read_to_string(out.path().join("echo.rs")).unwrap();
    let ours = std::fs::read_to_string(&committed).unwrap();
    assert!(
        fresh == ours,
        "{} is stale: regenerate with `thrift --gen rs -out crates/sdk/src/gen examples/thrift/echo.thrift`",
        committed.display()
    );
}
