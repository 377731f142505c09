//! Drain marks: an operator's request that proxies send an endpoint no new
//! calls while it keeps running (`rpcctl drain` / `rpcctl undrain`).
//!
//! A mark is a persistent entry per endpoint, kept beside the services
//! subtree rather than in it, because readers written against the
//! original list every child of a service as an endpoint:
//!
//! - ZooKeeper: `/zk/product/{product}/drain/{service}/{service_id}`
//!   (persistent; parents persistent and empty, created as needed);
//! - embedded registry: `{dir}/{product}/drain/{service}/{service_id}.json`.
//!
//! Its data is a [`DrainMark`] (who and when), for people: only its
//! presence counts. A mark outlives its endpoint's registration, so an
//! endpoint restarted under the same address stays drained until
//! undrained; a mark whose endpoint is gone is harmless. Readers report
//! marks as [`Endpoint::draining`](crate::Endpoint::draining) on the
//! endpoints they list, in the same view (`Registry::watch` included).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{RegistryError, ServiceMap};

/// What a drain mark records: the endpoint as the operator named it, and
/// who drained it when. Readers ignore unknown fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainMark {
    #[serde(default)]
    pub frontend: String,
    /// `user@host`.
    #[serde(default)]
    pub by: String,
    /// `YYYY-MM-DD HH:MM:SS`, local time (like `start_time`).
    #[serde(default)]
    pub at: String,
}

impl DrainMark {
    /// A mark for `frontend` by this process's user on this host, now.
    pub fn new(frontend: &str) -> DrainMark {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            // SAFETY: getuid cannot fail.
            .unwrap_or_else(|_| unsafe { libc::getuid() }.to_string());
        DrainMark {
            frontend: frontend.to_string(),
            by: format!("{user}@{}", crate::endpoint::hostname()),
            at: crate::endpoint::now_local(),
        }
    }
}

/// The drained `service_id`s of a product, by service.
pub type DrainSet = BTreeMap<String, BTreeSet<String>>;

/// Sets [`Endpoint::draining`](crate::Endpoint::draining) on every
/// endpoint of `map` according to `drained`.
pub(crate) fn mark(map: &mut ServiceMap, drained: &DrainSet) {
    for (service, endpoints) in map.iter_mut() {
        let ids = drained.get(service);
        for ep in endpoints {
            ep.draining = ids.is_some_and(|ids| ids.contains(&ep.service_id));
        }
    }
}

/// Products, services and service ids become path components: refuse
/// what would not name exactly one entry.
pub(crate) fn check_names(
    product: &str,
    service: &str,
    service_id: &str,
) -> Result<(), RegistryError> {
    let names = [
        ("product", product),
        ("service", service),
        ("service_id", service_id),
    ];
    for (what, name) in names {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(RegistryError::BadName {
                what,
                name: name.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Endpoint;

    #[test]
    fn marks_only_the_named_endpoints_and_never_the_record() {
        let mut map = ServiceMap::new();
        map.insert(
            "echo".into(),
            vec![
                Endpoint::new("echo", "127.0.0.1:1"),
                Endpoint::new("echo", "127.0.0.1:2"),
            ],
        );
        map.insert("other".into(), vec![Endpoint::new("other", "127.0.0.1:1")]);
        let mut drained = DrainSet::new();
        drained.insert("echo".into(), ["127_0_0_1_2".to_string()].into());
        drained.insert("gone".into(), ["127_0_0_1_9".to_string()].into());
        mark(&mut map, &drained);
        let flags = |s: &str| map[s].iter().map(|e| e.draining).collect::<Vec<_>>();
        assert_eq!(flags("echo"), [false, true]);
        assert_eq!(flags("other"), [false]);

        // Not part of the SPEC §6 record: neither written nor read.
        let json = serde_json::to_value(&map["echo"][1]).unwrap();
        assert!(json.get("draining").is_none(), "{json}");
        let read: Endpoint = serde_json::from_str(
            r#"{"service":"echo","service_id":"x","frontend":"127.0.0.1:1","draining":true}"#,
        )
        .unwrap();
        assert!(!read.draining);
    }

    #[test]
    fn names_that_are_not_one_path_component_are_refused() {
        assert!(check_names("test", "echo", "127_0_0_1_5555").is_ok());
        for (s, id) in [
            ("", "x"),
            ("echo", ""),
            ("..", "x"),
            ("echo", "a/b"),
            ("a/b", "x"),
        ] {
            assert!(check_names("test", s, id).is_err(), "{s:?} {id:?}");
        }
        assert!(check_names("../etc", "echo", "x").is_err());
    }
}
