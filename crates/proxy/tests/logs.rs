//! What `rpc-proxy` writes to stderr when it is a pipe: plain text without
//! colour codes by default, one JSON object per line with `--log-format json`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The first line the proxy logs with `flags`, then the proxy is stopped.
fn first_line(flags: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("proxy.ini");
    std::fs::write(
        &ini,
        format!(
            "zk = local:{}\nproxy_address = 127.0.0.1:0\n",
            dir.path().join("r").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rpc-proxy"))
        .arg("-c")
        .arg(&ini)
        .args(flags)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    line
}

#[test]
fn a_pipe_gets_plain_text() {
    let line = first_line(&[]);
    assert!(line.contains("proxy listening"), "{line}");
    assert!(!line.contains('\x1b'), "colour codes in {line:?}");
}

#[test]
fn json_lines_carry_level_message_and_fields() {
    let line = first_line(&["--log-format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["message"], "proxy listening");
    assert!(
        v["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{v}"
    );
    assert!(v["timestamp"].is_string());
}
