//! `rpc_config::Config::parse` on arbitrary text. A configuration that
//! parses must hold what the parser promises (limits at least 1,
//! heartbeat timeout above the interval, ratios within 0..=1, addresses
//! and the registry that print back to themselves), comments and blank
//! lines must not change it, and no `zk_auth` password may show in its
//! `Debug` output or in an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpc_config::{Config, RegistrySpec};
use rpc_transport::Address;

/// The password of the last `zk_auth` line, as the parser would see it.
fn password(text: &str) -> Option<String> {
    let mut found = None;
    for raw in text.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k.trim() == "zk_auth" {
            let mut parts = v.trim().splitn(3, ':');
            found = match (parts.next(), parts.next(), parts.next()) {
                (Some(_), Some(_), Some(p)) => Some(p.to_string()),
                _ => None,
            };
        }
    }
    found
}

fn check(c: &Config) {
    for n in [
        c.worker_pool_size,
        c.max_frame_size,
        c.max_connections,
        c.max_inflight,
        c.backend_max_inflight,
        c.queue_size,
        c.metrics_max_methods,
    ] {
        assert!(n >= 1);
    }
    assert!(c.heartbeat_timeout > c.heartbeat_interval);
    assert!(!c.balance_decay.is_zero());
    assert!(!c.falcon_interval.is_zero());
    assert!((0.0..=1.0).contains(&c.trace_sample_ratio));
    assert!(!c.product.is_empty() && !c.product.contains('/'));
    for a in c.proxy_address.iter().chain(&c.back_address) {
        assert_eq!(&a.to_string().parse::<Address>().unwrap(), a);
    }
    if let RegistrySpec::ZooKeeper(hosts) = &c.registry {
        assert_eq!(hosts.parse::<RegistrySpec>().as_ref(), Ok(&c.registry));
    }
    if let Some(argv) = &c.worker_command {
        assert!(!argv.is_empty());
    }
    if let Some(url) = &c.otlp_endpoint {
        assert!(url.starts_with("http://") && url.len() > "http://".len());
    }
    for v in [&c.service, &c.front_host, &c.ip_prefix, &c.metrics_address] {
        assert!(v.as_ref().is_none_or(|s| !s.is_empty()));
    }
}

/// Everything a log line could show of a parse.
fn render(r: &Result<Config, rpc_config::ConfigError>) -> String {
    match r {
        Ok(c) => format!("{c:?}"),
        Err(e) => format!("{e} {e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // A file naming another file must not be read from the fuzzer's disk.
    if text.contains("zk_auth_file") {
        return;
    }
    let parsed = Config::parse(&text);
    match &parsed {
        Ok(c) => check(c),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    // The password, when the text holds it once: it must show nowhere a
    // stand-in for it would not show as well.
    if let Some(p) = password(&text).filter(|p| text.matches(p.as_str()).count() == 1) {
        let stand_in = "\u{2603}".repeat(p.chars().count());
        let other = Config::parse(&text.replacen(p.as_str(), &stand_in, 1));
        let shown = render(&parsed);
        if shown.contains(p.as_str()) && !render(&other).contains(p.as_str()) {
            panic!("the password {p:?} shows in {shown}");
        }
    }

    // Comments, blank lines and spaces around keys and values change nothing.
    let mut padded = String::from("# comment\n\n");
    for line in text.lines() {
        padded.push_str(&format!("  {line}  \n# another\n"));
    }
    match (&parsed, Config::parse(&padded)) {
        (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("padding changed the outcome: {a:?} vs {b:?}"),
    }
});
