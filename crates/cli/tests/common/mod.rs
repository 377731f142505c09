//! Runs the built `rpcctl` and reads what it printed.

use std::time::Duration;

use rpc_registry::Endpoint;

pub struct Run {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

/// `rpcctl args…` with `envs`, which must finish within 20 s. Runs
/// asynchronously so the test's own registrations stay served meanwhile.
pub async fn rpcctl_env(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rpcctl"));
    cmd.args(args).kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("rpcctl {args:?} did not finish in time"))
        .expect("run rpcctl");
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 output"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 output"),
    }
}

pub async fn rpcctl(args: &[&str]) -> Run {
    rpcctl_env(args, &[]).await
}

/// An endpoint record as a deployed service would write it.
pub fn endpoint(service: &str, frontend: &str) -> Endpoint {
    let mut e = Endpoint::new(service, frontend);
    e.deploy_path = format!("/srv/{service}");
    e.code_url_version = format!("git@host:team/{service}.git@1a2b3c4");
    e
}

/// The lines of a table whose cells include every one of `cells`.
pub fn rows_with<'a>(table: &'a str, cells: &[&str]) -> Vec<&'a str> {
    table
        .lines()
        .filter(|line| {
            let words: Vec<&str> = line.split("  ").map(str::trim).collect();
            cells.iter().all(|c| words.contains(c))
        })
        .collect()
}
