//! Endpoint records (SPEC §6 JSON) as the registry readers take them,
//! drain marks, `service_id`, and the drain bookkeeping. A record that
//! reads must survive being written back (with its product) and read
//! again, must be refused under another product, and must be listed by
//! the embedded registry's reader exactly when it reads.
#![no_main]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rpc_fuzz::Cursor;
use rpc_registry::fuzzing::{check_names, mark, parse_record, record_with_product};
use rpc_registry::{local, service_id, DrainMark, DrainSet, Endpoint, ServiceMap};

fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a scratch directory"))
        .path()
}

fn check_service_id(frontend: &str) {
    let id = service_id(frontend);
    assert!(id.chars().count() <= 20);
    assert!(!id.contains(['.', ':', '/']));
    let full: String = frontend
        .chars()
        .filter(|&c| c != '/')
        .map(|c| if c == '.' || c == ':' { '_' } else { c })
        .collect();
    assert!(full.ends_with(&id), "{id:?} is the end of {full:?}");
    if full.chars().count() <= 20 {
        assert_eq!(id, full);
    }
}

fn one_component(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

/// Reads `json` as the embedded registry's reader does, from a file.
fn read_locally(json: &[u8]) -> Option<Endpoint> {
    let dir = scratch().join("test/services/echo");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("127_0_0_1_1.json");
    std::fs::write(&file, json).unwrap();
    let map = local::read_product(scratch(), "test").expect("the product reads");
    let _ = std::fs::remove_file(&file);
    let mut eps = map.get("echo").cloned().unwrap_or_default();
    assert!(eps.len() <= 1);
    eps.pop()
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let op = c.u8();
    let product = match op % 4 {
        0 | 1 => "test".to_string(),
        2 => "online_x".to_string(),
        _ => {
            let n = usize::from(c.u8() % 16);
            String::from_utf8_lossy(c.take(n)).into_owned()
        }
    };
    let drain_picks = c.take(4);
    let json = c.rest();

    if let Ok(m) = serde_json::from_slice::<DrainMark>(json) {
        let again: DrainMark = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(again, m);
    }
    check_service_id(&String::from_utf8_lossy(json));

    let plain = serde_json::from_slice::<Endpoint>(json);
    let parsed = parse_record(json, &product);
    if op & 0x10 != 0 {
        let listed = read_locally(json);
        if let Some(ep) = &listed {
            assert_eq!(Ok(ep), parse_record(json, "test").as_ref());
        } else if let Ok(ep) = parse_record(json, "test") {
            // Left out only as the entry of a process that is gone.
            // (Text that is not UTF-8 in a field the readers skip: no
            // JSON value to look into.)
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) {
                assert!(
                    v.get("pid").is_some(),
                    "a readable record is not listed: {ep:?}"
                );
            }
        }
    }
    let ep = match parsed {
        Ok(ep) => ep,
        Err(_) => {
            // Refused although it reads as an endpoint: it names a product
            // (or holds text that is not UTF-8 where the endpoint's reader
            // skips without looking: no JSON value to look into).
            if plain.is_ok() {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) {
                    assert!(
                        v.get("product").is_some_and(|p| !p.is_null()),
                        "refused: {v}"
                    );
                }
            }
            return;
        }
    };
    assert_eq!(plain.as_ref().ok(), Some(&ep));
    assert!(!ep.draining, "draining is never read from a record");

    // Written back with its product, it reads the same, under that
    // product only.
    let record = record_with_product(&ep, &product);
    assert_eq!(parse_record(&record, &product).as_ref(), Ok(&ep));
    assert!(parse_record(&record, &format!("{product}x")).is_err());
    let v: serde_json::Value = serde_json::from_slice(&record).unwrap();
    assert_eq!(v["product"].as_str(), Some(product.as_str()));
    assert!(v.get("draining").is_none());

    check_service_id(&ep.frontend);
    assert_eq!(
        check_names(&product, &ep.service, &ep.service_id).is_ok(),
        one_component(&product) && one_component(&ep.service) && one_component(&ep.service_id)
    );

    // Drain marks: an endpoint is draining exactly when its service lists
    // its id.
    let mut other = ep.clone();
    other.service_id.push('2');
    let mut map = ServiceMap::new();
    map.insert(ep.service.clone(), vec![ep.clone(), other.clone()]);
    map.insert(format!("{}-b", ep.service), vec![ep.clone()]);
    let mut drained = DrainSet::new();
    for (i, &p) in drain_picks.iter().enumerate() {
        let service = match p & 3 {
            0 => ep.service.clone(),
            1 => format!("{}-b", ep.service),
            _ => format!("gone{i}"),
        };
        let id = match (p >> 2) & 3 {
            0 => ep.service_id.clone(),
            1 => other.service_id.clone(),
            _ => format!("{}", p),
        };
        drained
            .entry(service)
            .or_insert_with(BTreeSet::new)
            .insert(id);
    }
    mark(&mut map, &drained);
    let empty = BTreeSet::new();
    for (service, eps) in &map {
        let ids = drained.get(service).unwrap_or(&empty);
        for e in eps {
            assert_eq!(e.draining, ids.contains(&e.service_id), "{service} {e:?}");
        }
    }
});
