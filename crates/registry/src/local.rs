//! The embedded single-machine backend: a directory of endpoint files.
//!
//! Layout mirrors ZooKeeper's:
//! `{dir}/{product}/services/{service}/{service_id}.json`, each file the
//! SPEC §6 JSON record plus the owning process (`pid` and its start time,
//! so a recycled pid is not mistaken for the owner). Ephemeral nodes become
//! "files whose owner is alive": watchers skip and delete entries of dead
//! processes, so a crashed service disappears like an expired session.
//! Watchers poll (cheap: one `stat` per file, content re-read only when it
//! changed), which works on every filesystem and needs no server. Drain
//! marks are files too, `{dir}/{product}/drain/{service}/{service_id}.json`
//! (see [`crate::drain`]), read by the same poll.
//!
//! Product isolation (see the crate's documentation): records carry their
//! product, and neither the product's directory, its `services` directory
//! nor an endpoint file may be a symbolic link (a link would read another
//! product's entries as this one's); service directories that are links
//! are skipped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch, OnceCell};
use tracing::{debug, info, warn};

use crate::drain::{self, DrainMark, DrainSet};
use crate::{Endpoint, Registration, Registry, RegistryError, ServiceMap};

/// How often watchers look at the directory and registrants check that
/// their file is still there.
pub const POLL: Duration = Duration::from_millis(100);

pub struct LocalRegistry {
    base: PathBuf,
    product: String,
    services: OnceCell<watch::Receiver<Arc<ServiceMap>>>,
}

/// What is stored: the endpoint record and its owner.
#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    endpoint: Endpoint,
    /// The product it is registered under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    product: Option<String>,
    #[serde(flatten)]
    owner: Owner,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
struct Owner {
    pid: u32,
    /// Start time of the process in clock ticks since boot (field 22 of
    /// `/proc/{pid}/stat`); 0 where unknown.
    #[serde(default)]
    pid_start: u64,
    /// Tells registrations of one process apart (a restarted service in
    /// the same process must not be removed by its predecessor).
    #[serde(default)]
    token: u64,
}

impl Owner {
    fn this_process() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            pid_start: process_start(pid).unwrap_or(0),
            token: rand::random(),
        }
    }

    fn is_alive(&self) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, 0) };
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            return false;
        }
        match (self.pid_start, process_start(self.pid)) {
            (0, _) | (_, None) => true,
            (want, Some(got)) => want == got,
        }
    }
}

fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from its closing ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl LocalRegistry {
    /// A registry rooted at `dir` (created if missing) for `product`.
    pub fn open(dir: &Path, product: &str) -> Result<Self, RegistryError> {
        let base = dir.join(product).join("services");
        std::fs::create_dir_all(&base).map_err(|source| RegistryError::Local {
            path: base.display().to_string(),
            source,
        })?;
        check_no_links(&base)?;
        Ok(LocalRegistry {
            base,
            product: product.to_string(),
            services: OnceCell::new(),
        })
    }

    /// `{dir}/{product}/services`.
    pub fn base(&self) -> &Path {
        &self.base
    }
}

#[async_trait::async_trait]
impl Registry for LocalRegistry {
    async fn register(&self, endpoint: Endpoint) -> Result<Registration, RegistryError> {
        let dir = self.base.join(&endpoint.service);
        let path = dir.join(format!("{}.json", endpoint.service_id));
        let record = Record {
            endpoint,
            product: Some(self.product.clone()),
            owner: Owner::this_process(),
        };
        let data = serde_json::to_vec_pretty(&record).expect("record serializes");
        write_atomically(&dir, &path, &data)?;
        info!(path = %path.display(), "registered");
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Like a re-registration after session expiry: put the file
            // back if something removed it, stop if another owner took it.
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    _ = tokio::time::sleep(POLL * 10) => {}
                }
                // File system calls block: keep them off the runtime thread.
                let (dir2, path2, data2) = (dir.clone(), path.clone(), data.clone());
                let owner = record.owner;
                let checked = tokio::task::spawn_blocking(move || match read_record(&path2) {
                    Ok(None) => Some(write_atomically(&dir2, &path2, &data2).map(|()| true)),
                    Ok(Some(r)) if r.owner != owner => None,
                    _ => Some(Ok(false)),
                })
                .await;
                match checked {
                    Ok(Some(Ok(true))) => info!(path = %path.display(), "re-registered"),
                    Ok(Some(Ok(false))) => {}
                    Ok(Some(Err(e))) => warn!(error = %e, "re-register failed"),
                    // Another owner took the entry, or the runtime is going away.
                    Ok(None) | Err(_) => return,
                }
            }
            match read_record(&path) {
                Ok(Some(r)) if r.owner == record.owner => {
                    let _ = std::fs::remove_file(&path);
                    info!(path = %path.display(), "deregistered");
                }
                _ => {}
            }
        });
        Ok(Registration::new(stop_tx, task))
    }

    async fn watch(&self) -> Result<watch::Receiver<Arc<ServiceMap>>, RegistryError> {
        let rx = self
            .services
            .get_or_try_init(|| async {
                let mut scanner = Scanner::new(self.base.clone(), &self.product);
                let first = scanner.scan()?;
                let (tx, rx) = watch::channel(Arc::new(first));
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = tx.closed() => return,
                            _ = tokio::time::sleep(POLL) => {}
                        }
                        // File system calls block: off the runtime thread,
                        // which in a single-threaded proxy serves requests.
                        let scanned = tokio::task::spawn_blocking(move || {
                            let r = scanner.scan();
                            (scanner, r)
                        })
                        .await;
                        let Ok((back, result)) = scanned else { return };
                        scanner = back;
                        match result {
                            Ok(map) => {
                                tx.send_if_modified(|cur| {
                                    if **cur == map {
                                        return false;
                                    }
                                    *cur = Arc::new(map);
                                    true
                                });
                            }
                            // Keep the last view, like a ZooKeeper outage.
                            Err(e) => debug!(error = %e, "local registry scan failed"),
                        }
                    }
                });
                Ok::<_, RegistryError>(rx)
            })
            .await?;
        Ok(rx.clone())
    }
}

/// The products under `dir` (each a directory with a `services`
/// directory), sorted; none if `dir` does not exist. A one-off read for
/// operator tools, the counterpart of [`crate::zk::ZkReader::products`].
pub fn products(dir: &Path) -> Result<Vec<String>, RegistryError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(RegistryError::Local {
                path: dir.display().to_string(),
                source,
            })
        }
    };
    let mut products: Vec<String> = entries
        .flatten()
        // A linked product would be another's entries under a second name.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| e.path().join("services").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    products.sort();
    Ok(products)
}

/// Every service of `product` under `dir` with its live endpoints, read
/// once and creating nothing (the counterpart of
/// [`crate::zk::ZkReader::services`]). Like a watcher, it leaves out and
/// removes the entries of dead owners. Unlike [`Registry::watch`], a
/// service directory without endpoints is kept (with none).
pub fn read_product(dir: &Path, product: &str) -> Result<ServiceMap, RegistryError> {
    let base = dir.join(product).join("services");
    if !base.is_dir() {
        return Ok(ServiceMap::new());
    }
    let mut scanner = Scanner::new(base.clone(), product);
    let mut map = scanner.scan()?;
    for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let service = entry.file_name().to_string_lossy().into_owned();
            map.entry(service).or_default();
        }
    }
    Ok(map)
}

/// `{dir}/{product}/drain/{service}/{service_id}.json`.
fn drain_file(dir: &Path, product: &str, service: &str, service_id: &str) -> PathBuf {
    dir.join(product)
        .join("drain")
        .join(service)
        .join(format!("{service_id}.json"))
}

/// Marks endpoint `service_id` of `service` in `product` under `dir`
/// drained, recording `mark`; false if it was already (its mark is left
/// as it was). The counterpart of [`crate::zk::ZkReader::drain`].
pub fn drain(
    dir: &Path,
    product: &str,
    service: &str,
    service_id: &str,
    mark: &DrainMark,
) -> Result<bool, RegistryError> {
    drain::check_names(product, service, service_id)?;
    let path = drain_file(dir, product, service, service_id);
    if path.exists() {
        return Ok(false);
    }
    let data = serde_json::to_vec_pretty(mark).expect("a drain mark serializes");
    write_atomically(path.parent().expect("a parent"), &path, &data)?;
    Ok(true)
}

/// Removes the drain mark of `service_id` of `service`; false if there
/// was none. The counterpart of [`crate::zk::ZkReader::undrain`].
pub fn undrain(
    dir: &Path,
    product: &str,
    service: &str,
    service_id: &str,
) -> Result<bool, RegistryError> {
    drain::check_names(product, service, service_id)?;
    let path = drain_file(dir, product, service, service_id);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(RegistryError::Local {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// The drain marks under `root` (`{dir}/{product}/drain`); none if it does
/// not exist.
fn read_drains(root: &Path) -> DrainSet {
    let mut drained = DrainSet::new();
    for service in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let Ok(files) = std::fs::read_dir(service.path()) else {
            continue; // not a directory, or removed meanwhile
        };
        let ids: std::collections::BTreeSet<String> = files
            .flatten()
            .filter_map(|f| {
                let name = f.file_name().to_string_lossy().into_owned();
                let id = name.strip_suffix(".json")?;
                (!id.is_empty() && !name.starts_with('.')).then(|| id.to_string())
            })
            .collect();
        if !ids.is_empty() {
            drained.insert(service.file_name().to_string_lossy().into_owned(), ids);
        }
    }
    drained
}

fn write_atomically(dir: &Path, path: &Path, data: &[u8]) -> Result<(), RegistryError> {
    let err = |source| RegistryError::Local {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, data).map_err(err)?;
    // A rename replaces a stale entry at the same path in one step.
    std::fs::rename(&tmp, path).map_err(err)
}

fn read_record(path: &Path) -> std::io::Result<Option<Record>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A parsed file (None if malformed) and the (mtime, size) it was read at.
type Cached = (SystemTime, u64, Option<(Endpoint, Option<Owner>)>);

/// Refuses a product whose directory or `services` directory (`base`) is
/// a symbolic link: it would show another product's entries as this one's.
fn check_no_links(base: &Path) -> Result<(), RegistryError> {
    for dir in [base.parent().expect("{dir}/{product}"), base] {
        if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(RegistryError::Local {
                path: dir.display().to_string(),
                source: std::io::Error::other(
                    "is a symbolic link; a product's entries must be its own",
                ),
            });
        }
    }
    Ok(())
}

/// Reads the tree, re-parsing only files whose mtime or size changed.
struct Scanner {
    base: PathBuf,
    product: String,
    /// `{dir}/{product}/drain`, beside `base`: only names are read there.
    drains: PathBuf,
    cache: HashMap<PathBuf, Cached>,
}

impl Scanner {
    /// A scanner of `base`, `{dir}/{product}/services`.
    fn new(base: PathBuf, product: &str) -> Scanner {
        let drains = base.with_file_name("drain");
        Scanner {
            base,
            product: product.to_string(),
            drains,
            cache: HashMap::new(),
        }
    }

    fn scan(&mut self) -> Result<ServiceMap, RegistryError> {
        let err = |path: &Path| {
            let path = path.display().to_string();
            move |source| RegistryError::Local { path, source }
        };
        check_no_links(&self.base)?;
        let mut map = ServiceMap::new();
        let mut seen = HashMap::new();
        for service in std::fs::read_dir(&self.base).map_err(err(&self.base))? {
            let service = service.map_err(err(&self.base))?;
            if !service.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let Ok(files) = std::fs::read_dir(service.path()) else {
                continue; // removed meanwhile
            };
            let mut endpoints = Vec::new();
            for file in files.flatten() {
                let path = file.path();
                if path.extension().is_none_or(|e| e != "json")
                    || file.file_name().to_string_lossy().starts_with('.')
                {
                    continue;
                }
                // Not following links (the metadata is the entry's own).
                let Ok(meta) = file.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                let stamp = (
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    meta.len(),
                );
                let parsed = match self.cache.remove(&path) {
                    Some((t, l, p)) if (t, l) == stamp => p,
                    _ => parse_entry(&path, &self.product),
                };
                if let Some((ep, owner)) = &parsed {
                    if owner.is_some_and(|o| !o.is_alive()) {
                        // The owner died without deregistering.
                        info!(path = %path.display(), "removing the entry of a dead process");
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    endpoints.push(ep.clone());
                }
                seen.insert(path, (stamp.0, stamp.1, parsed));
            }
            if !endpoints.is_empty() {
                endpoints.sort_by(|a, b| a.service_id.cmp(&b.service_id));
                map.insert(
                    service.file_name().to_string_lossy().into_owned(),
                    endpoints,
                );
            }
        }
        self.cache = seen;
        drain::mark(&mut map, &read_drains(&self.drains));
        Ok(map)
    }
}

/// An endpoint and its owner; records written by hand (no owner) are kept
/// until removed. Malformed files and records naming another product than
/// `product` are ignored with a warning.
fn parse_entry(path: &Path, product: &str) -> Option<(Endpoint, Option<Owner>)> {
    let bytes = std::fs::read(path).ok()?;
    let endpoint = match crate::parse_record(&bytes, product) {
        Ok(e) => e,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "ignoring an endpoint record");
            return None;
        }
    };
    let owner = serde_json::from_slice::<Owner>(&bytes).ok();
    Some((endpoint, owner))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(service: &str, port: u16) -> Endpoint {
        Endpoint::new(service, &format!("127.0.0.1:{port}"))
    }

    #[tokio::test]
    async fn products_and_one_read_of_a_product() {
        let dir = tempfile::tempdir().unwrap();
        assert!(products(dir.path()).unwrap().is_empty());
        assert!(products(&dir.path().join("missing")).unwrap().is_empty());

        let test = LocalRegistry::open(dir.path(), "test").unwrap();
        let online = LocalRegistry::open(dir.path(), "online_x").unwrap();
        let _b = test.register(ep("echo", 7002)).await.unwrap();
        let _a = test.register(ep("echo", 7001)).await.unwrap();
        let _c = online.register(ep("other", 7003)).await.unwrap();
        // A service that lost its endpoints, and a stray file: neither is a product.
        std::fs::create_dir_all(dir.path().join("test/services/gone")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "").unwrap();

        assert_eq!(products(dir.path()).unwrap(), ["online_x", "test"]);
        let map = read_product(dir.path(), "test").unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), ["echo", "gone"]);
        let frontends: Vec<_> = map["echo"].iter().map(|e| e.frontend.as_str()).collect();
        assert_eq!(frontends, ["127.0.0.1:7001", "127.0.0.1:7002"]);
        assert!(map["gone"].is_empty());
        assert_eq!(
            read_product(dir.path(), "online_x").unwrap()["other"].len(),
            1
        );
    }

    #[test]
    fn reading_an_unknown_product_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_product(dir.path(), "nope").unwrap().is_empty());
        assert!(!dir.path().join("nope").exists());
    }

    #[test]
    fn a_read_leaves_out_entries_of_dead_owners() {
        let dir = tempfile::tempdir().unwrap();
        let services = dir.path().join("test/services/echo");
        std::fs::create_dir_all(&services).unwrap();
        let dead = Record {
            endpoint: ep("echo", 7001),
            product: None,
            // Above the kernel's largest pid (2^22): nobody's.
            owner: Owner {
                pid: i32::MAX as u32,
                pid_start: 0,
                token: 1,
            },
        };
        let path = services.join("127_0_0_1_7001.json");
        std::fs::write(&path, serde_json::to_vec(&dead).unwrap()).unwrap();
        let map = read_product(dir.path(), "test").unwrap();
        assert!(map["echo"].is_empty());
        assert!(!path.exists(), "the dead owner's entry is removed");
    }
}
