//! The ZooKeeper backend (SPEC §6).
//!
//! One ZooKeeper session per [`ZkRegistry`], kept by a supervisor task:
//! while the connection is merely lost the client library reconnects within
//! the session; once the session has expired the supervisor opens a new one
//! and publishes it. Registrations and the watcher follow the current
//! session: a registration re-creates its ephemeral node under every new
//! session, and the watcher re-reads the tree. Reads that fail leave the
//! last published map untouched, so a ZooKeeper outage never empties a
//! proxy's routing table. The watcher also follows the product's drain
//! marks (`/zk/product/{product}/drain`, see [`crate::drain`]).
//!
//! # Credentials and ACLs
//!
//! Without credentials every node is created open to all
//! (`world:anyone` with all permissions), as the original did. With a
//! [`ZkAuth`] (`zk_auth`), every session authenticates with it (again
//! after each new session) and the nodes it creates get:
//!
//! | node | ACL |
//! |---|---|
//! | shared parents: `/zk`, `/zk/product`, `/zk/product/{product}`, its `services` and `drain` | `world:anyone` read + create |
//! | a service's node, `…/services/{service}` (and `…/drain/{service}`) | its creator's identity all, `world:anyone` read |
//! | an endpoint (and a drain mark) | its creator's identity all, `world:anyone` read |
//!
//! ZooKeeper checks a delete against the *parent's* ACL and a write
//! against the node's own, so: anyone can read everything (a proxy
//! without credentials routes as before); anyone may add a new service
//! under a product, but nobody can remove or re-permission the shared
//! parents; only the identity that created a service's node may add,
//! replace or remove that service's endpoints, and only it may rewrite
//! them. Two services registering under one product with different
//! identities each own their service's node: neither can touch the other's
//! endpoints. One service is one identity: a registrant whose service node
//! belongs to another identity gets a clear error. Nodes that already exist
//! keep their ACL (nothing is re-permissioned): a service node created
//! without credentials lets anyone remove its endpoints, which a
//! registrant with credentials warns about (an operator fixes it with
//! `setAcl`, or removes the empty node so that it is created anew).
//!
//! # Product isolation
//!
//! A reader only lists `/zk/product/{product}/services`. Beyond the path,
//! the registry writes the product into each endpoint record it publishes
//! (`"product"`, a field readers of the original ignore), and readers drop
//! a record that names another product: a node copied from one product's
//! subtree into another's (a proxy of `test` handed an `online…` endpoint)
//! is not routed to. Records that name no product (other SDKs) are read as
//! before; see [`crate::product_matches`].

use std::sync::Arc;
use std::time::Duration;

use futures::future::{join_all, select_all};
use rpc_config::ZkAuth;
use tokio::sync::{oneshot, watch, OnceCell};
use tracing::{debug, info, warn};
use zookeeper_client::{
    Acl, Acls, AuthId, Client, CreateMode, CreateOptions, Error as ZkError, MultiWriteError,
    Permission, SessionId, SessionState,
};

use crate::drain::{self, DrainMark, DrainSet};
use crate::{Endpoint, Registration, Registry, RegistryError, ServiceMap};

/// The ACLs of the nodes a client creates, by its credentials (see the
/// module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// No credentials: everything open to all, as the original.
    Open,
    /// Authenticated: shared parents read + create for all; the rest the
    /// creator's, readable by all.
    Owned,
}

static SHARED: std::sync::LazyLock<[Acl; 1]> = std::sync::LazyLock::new(|| {
    [Acl::new(
        Permission::READ | Permission::CREATE,
        AuthId::anyone(),
    )]
});
static OWNED: std::sync::LazyLock<[Acl; 2]> = std::sync::LazyLock::new(|| {
    [
        // `auth`: every identity the creating session authenticated as.
        Acl::new(Permission::ALL, AuthId::authed()),
        Acl::new(Permission::READ, AuthId::anyone()),
    ]
});

impl Access {
    fn of(auth: Option<&ZkAuth>) -> Access {
        match auth {
            Some(_) => Access::Owned,
            None => Access::Open,
        }
    }

    /// Persistent parents every registrant of every service shares.
    fn shared(self) -> CreateOptions<'static> {
        match self {
            Access::Open => CreateMode::Persistent.with_acls(Acls::anyone_all()),
            Access::Owned => CreateMode::Persistent.with_acls(Acls::new(&*SHARED)),
        }
    }

    /// A node of one identity (`mode`: a service's node, an endpoint, a
    /// drain mark).
    fn owned(self, mode: CreateMode) -> CreateOptions<'static> {
        match self {
            Access::Open => mode.with_acls(Acls::anyone_all()),
            Access::Owned => mode.with_acls(Acls::new(&*OWNED)),
        }
    }
}

/// The parent of an absolute path.
fn parent(path: &str) -> &str {
    &path[..path.rfind('/').expect("absolute path")]
}

/// Creates `path`'s ancestors up to and including `shared` (with the
/// shared ACL) and then the node `path` itself, persistent and owned, if
/// missing. `path` is `shared`'s child. With credentials, warns when an
/// existing `path` lets anyone delete its children: what is registered
/// under it is then not protected.
async fn ensure_owned_dir(
    client: &Client,
    access: Access,
    shared: &str,
    path: &str,
) -> Result<(), ZkError> {
    debug_assert_eq!(parent(path), shared);
    client.mkdir(shared, &access.shared()).await?;
    match client
        .create(path, &[], &access.owned(CreateMode::Persistent))
        .await
    {
        Ok(_) => Ok(()),
        Err(ZkError::NodeExists) => {
            if access == Access::Owned {
                let (acls, _) = client.get_acl(path).await?;
                let open = acls.iter().any(|a| {
                    a.auth_id() == &AuthId::anyone() && a.permission().has(Permission::DELETE)
                });
                if open {
                    warn!(
                        path,
                        "this node lets anyone delete its children (it was created without \
                         credentials): what is registered under it is not protected; \
                         restrict it with setAcl"
                    );
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The client library, for tests and tools that look at the tree
/// directly ([`ZkRegistry::client`]).
pub use zookeeper_client;

/// Pause between retries of a failed ZooKeeper operation.
const RETRY: Duration = Duration::from_millis(200);

pub struct ZkRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    hosts: String,
    /// `/zk/product/{product}/services`
    base: String,
    session_timeout: Duration,
    /// The product this registry reads and registers in.
    product: String,
    access: Access,
    /// The current session's client; replaced after an expiry.
    client: watch::Receiver<Client>,
    services: OnceCell<watch::Receiver<Arc<ServiceMap>>>,
}

impl ZkRegistry {
    /// Connects to `hosts` (ZooKeeper's `host:port,host:port` form) for
    /// `product`. Fails if no server answers within the session timeout.
    pub async fn connect(
        hosts: &str,
        product: &str,
        session_timeout: Duration,
    ) -> Result<Self, RegistryError> {
        Self::connect_as(hosts, product, session_timeout, None).await
    }

    /// [`ZkRegistry::connect`] authenticated as `auth` (`zk_auth`): the
    /// nodes it creates get the ACLs the module's documentation lists.
    pub async fn connect_as(
        hosts: &str,
        product: &str,
        session_timeout: Duration,
        auth: Option<&ZkAuth>,
    ) -> Result<Self, RegistryError> {
        let client = new_session(hosts, session_timeout, auth)
            .await
            .map_err(|e| RegistryError::ZooKeeper(format!("connect to {hosts}: {e}")))?;
        match auth {
            Some(auth) => {
                info!(hosts, session = %client.session_id(), %auth, "connected to ZooKeeper")
            }
            None => info!(hosts, session = %client.session_id(), "connected to ZooKeeper"),
        }
        let (tx, rx) = watch::channel(client);
        tokio::spawn(supervise(
            hosts.to_string(),
            session_timeout,
            auth.cloned(),
            tx,
        ));
        Ok(ZkRegistry {
            inner: Arc::new(Inner {
                hosts: hosts.to_string(),
                base: services_root(product),
                session_timeout,
                product: product.to_string(),
                access: Access::of(auth),
                client: rx,
                services: OnceCell::new(),
            }),
        })
    }

    /// The current session (tests expire it on purpose).
    pub fn session_id(&self) -> SessionId {
        self.inner.client.borrow().session_id()
    }

    /// The current session's client (tests use it to inspect the tree).
    pub fn client(&self) -> Client {
        self.inner.client.borrow().clone()
    }

    pub fn hosts(&self) -> &str {
        &self.inner.hosts
    }
}

/// A new session, authenticated as `auth` if given (the client library
/// sends it again after every reconnection within the session).
async fn new_session(
    hosts: &str,
    session_timeout: Duration,
    auth: Option<&ZkAuth>,
) -> Result<Client, ZkError> {
    let mut connector = Client::connector()
        .with_session_timeout(session_timeout)
        .with_connection_timeout(Duration::from_secs(1).min(session_timeout));
    if let Some(auth) = auth {
        connector = connector.with_auth(ZkAuth::SCHEME, auth.credentials());
    }
    connector.connect(hosts).await
}

/// Keeps one live session published in `tx`; opens a new one after expiry.
/// The session lives as long as anyone uses it: the registry, a
/// registration or a watcher (each holds a receiver).
async fn supervise(
    hosts: String,
    session_timeout: Duration,
    auth: Option<ZkAuth>,
    tx: watch::Sender<Client>,
) {
    let stop = tx.closed();
    tokio::pin!(stop);
    loop {
        let mut states = tx.borrow().state_watcher();
        // Wait for a terminal state of the current session.
        loop {
            let state = tokio::select! {
                _ = &mut stop => return,
                s = states.changed() => s,
            };
            match state {
                SessionState::Disconnected => warn!(hosts, "ZooKeeper connection lost"),
                SessionState::SyncConnected => info!(hosts, "ZooKeeper connection back"),
                s if s.is_terminated() => {
                    warn!(hosts, state = ?s, "ZooKeeper session ended");
                    break;
                }
                _ => {}
            }
        }
        // Open a new session, retrying until a server answers.
        let client = loop {
            let attempt = tokio::select! {
                _ = &mut stop => return,
                c = new_session(&hosts, session_timeout, auth.as_ref()) => c,
            };
            match attempt {
                Ok(c) => break c,
                Err(e) => {
                    debug!(hosts, error = %e, "ZooKeeper reconnect failed");
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        };
        info!(hosts, session = %client.session_id(), "new ZooKeeper session");
        if tx.send(client).is_err() {
            return;
        }
    }
}

#[async_trait::async_trait]
impl Registry for ZkRegistry {
    async fn register(&self, endpoint: Endpoint) -> Result<Registration, RegistryError> {
        let path = format!(
            "{}/{}/{}",
            self.inner.base, endpoint.service, endpoint.service_id
        );
        let data = crate::record_with_product(&endpoint, &self.inner.product);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(keep_registered(
            self.inner.client.clone(),
            self.inner.access,
            path.clone(),
            data,
            ready_tx,
            stop_rx,
        ));
        // A registrant starting while ZooKeeper is away gets an error rather
        // than hanging; once registered it survives outages.
        let wait = self.inner.session_timeout.max(Duration::from_secs(5)) * 2;
        match tokio::time::timeout(wait, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Registration::new(stop_tx, task)),
            Ok(Ok(Err(refused))) => Err(RegistryError::ZooKeeper(refused)),
            _ => {
                task.abort();
                Err(RegistryError::ZooKeeper(format!(
                    "could not create {path} within {wait:?}"
                )))
            }
        }
    }

    async fn watch(&self) -> Result<watch::Receiver<Arc<ServiceMap>>, RegistryError> {
        let inner = &self.inner;
        let rx = inner
            .services
            .get_or_init(|| async {
                let (tx, rx) = watch::channel(Arc::new(ServiceMap::new()));
                let (ready_tx, ready_rx) = oneshot::channel();
                tokio::spawn(watch_services(
                    inner.client.clone(),
                    inner.product.clone(),
                    inner.access,
                    inner.session_timeout,
                    tx,
                    ready_tx,
                ));
                let _ = ready_rx.await;
                rx
            })
            .await;
        Ok(rx.clone())
    }
}

/// Publishes the node under every session until stopped, then deletes it
/// (only if it is still ours: a newer registrant may have replaced it).
///
/// A first attempt that ZooKeeper refuses for lack of permission (the
/// service's node belongs to another identity) fails the registration at
/// once, through `ready`, rather than retrying.
async fn keep_registered(
    mut clients: watch::Receiver<Client>,
    access: Access,
    path: String,
    data: Vec<u8>,
    ready: oneshot::Sender<Result<(), String>>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut ready = Some(ready);
    loop {
        let client = clients.borrow_and_update().clone();
        match publish(&client, access, &path, &data).await {
            Ok(()) => {
                info!(path, session = %client.session_id(), "registered");
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
                tokio::select! {
                    _ = &mut stop => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), unpublish(&client, &path)).await;
                        return;
                    }
                    changed = clients.changed() => {
                        if changed.is_err() {
                            return; // registry closed: the session goes with it
                        }
                    }
                }
            }
            Err(ZkError::NoAuth) if ready.is_some() => {
                let refused = format!(
                    "not allowed to register {path}: its service's node belongs to another \
                     ZooKeeper identity (zk_auth), or was created by one while this registrant \
                     has none"
                );
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(refused));
                }
                return;
            }
            Err(e) => {
                match e {
                    ZkError::NoAuth => warn!(path, "register refused (NoAuth); retrying"),
                    _ => debug!(path, error = %e, "register failed; retrying"),
                }
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

async fn publish(client: &Client, access: Access, path: &str, data: &[u8]) -> Result<(), ZkError> {
    let service = parent(path);
    ensure_owned_dir(client, access, parent(service), service).await?;
    let ephemeral = access.owned(CreateMode::Ephemeral);
    for _ in 0..3 {
        match client.check_stat(path).await? {
            // Already ours (a retry after a lost reply): nothing to do.
            Some(stat) if stat.ephemeral_owner == client.session_id().0 => return Ok(()),
            // Another session's node (a leftover, or a predecessor handing
            // its endpoint over): replaced in one transaction, so watchers
            // never see the endpoint missing in between.
            Some(stat) => {
                let mut replace = client.new_multi_writer();
                replace.add_delete(path, Some(stat.version))?;
                replace.add_create(path, data, &ephemeral)?;
                match replace.commit().await {
                    Ok(_) => return Ok(()),
                    // Changed or gone meanwhile: look again.
                    Err(MultiWriteError::OperationFailed {
                        source: ZkError::NoNode | ZkError::BadVersion | ZkError::NodeExists,
                        ..
                    }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            None => match client.create(path, data, &ephemeral).await {
                Ok(_) => return Ok(()),
                Err(ZkError::NodeExists) => continue,
                Err(e) => return Err(e),
            },
        }
    }
    Err(ZkError::NodeExists)
}

async fn unpublish(client: &Client, path: &str) {
    match client.check_stat(path).await {
        Ok(Some(stat)) if stat.ephemeral_owner == client.session_id().0 => {
            match client.delete(path, Some(stat.version)).await {
                Ok(()) => info!(path, "deregistered"),
                Err(e) => warn!(path, error = %e, "deregister failed"),
            }
        }
        Ok(_) => {}
        Err(e) => warn!(path, error = %e, "deregister failed"),
    }
}

/// Re-reads the product's tree on every change and publishes it; a failed
/// read keeps the last map.
///
/// After a session expiry every registrant's node is gone until that
/// registrant, too, has a new session and registers again. For one session
/// timeout after our own new session, the view therefore only grows:
/// endpoints missing from the tree stay until the settle period is over, so
/// live services are not dropped for the moment they take to come back.
async fn watch_services(
    mut clients: watch::Receiver<Client>,
    product: String,
    access: Access,
    timeout: Duration,
    tx: watch::Sender<Arc<ServiceMap>>,
    ready: oneshot::Sender<()>,
) {
    let (base, drains) = (services_root(&product), drain_root(&product));
    let mut ready = Some(ready);
    let mut settle_until: Option<tokio::time::Instant> = None;
    loop {
        let client = clients.borrow_and_update().clone();
        let read = tokio::time::timeout(
            timeout,
            read_tree(&client, access, &base, &drains, &product),
        )
        .await;
        match read {
            Ok(Ok((mut map, watchers))) => {
                let settling = settle_until.is_some_and(|t| tokio::time::Instant::now() < t);
                if !settling {
                    settle_until = None;
                }
                tx.send_if_modified(|current| {
                    if settling {
                        keep_missing(&mut map, current);
                    }
                    if **current == map {
                        return false;
                    }
                    debug!(services = map.len(), "registry changed");
                    *current = Arc::new(map);
                    true
                });
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
                let settled = async {
                    match settle_until {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = select_all(watchers.into_iter().map(|w| Box::pin(w.changed()))) => {}
                    _ = settled => {}
                    changed = clients.changed() => {
                        if changed.is_err() { return }
                        settle_until = Some(tokio::time::Instant::now() + timeout);
                    }
                    _ = tx.closed() => return,
                }
                continue;
            }
            Ok(Err(e)) => debug!(error = %e, "registry read failed; keeping the last view"),
            Err(_) => debug!("registry read timed out; keeping the last view"),
        }
        if ready.is_some() {
            // The first view is owed to `watch()`: keep trying promptly.
            tokio::time::sleep(RETRY).await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            changed = clients.changed() => {
                if changed.is_err() { return }
                settle_until = Some(tokio::time::Instant::now() + timeout);
            }
            _ = tx.closed() => return,
        }
    }
}

/// Adds to `map` the endpoints of `previous` it lacks (drain flags as
/// they were).
fn keep_missing(map: &mut ServiceMap, previous: &ServiceMap) {
    for (service, old) in previous {
        let now = map.entry(service.clone()).or_default();
        for ep in old {
            if !now.iter().any(|e| e.service_id == ep.service_id) {
                now.push(ep.clone());
            }
        }
        now.sort_by(|a, b| a.service_id.cmp(&b.service_id));
    }
}

type Watchers = Vec<zookeeper_client::OneshotWatcher>;

/// The services under `base` with their endpoints, drain marks under
/// `drains` applied, and the watchers that fire on any change of either.
async fn read_tree(
    client: &Client,
    access: Access,
    base: &str,
    drains: &str,
    product: &str,
) -> Result<(ServiceMap, Watchers), ZkError> {
    client.mkdir(base, &access.shared()).await?;
    let (services, _, w) = client.get_and_watch_children(base).await?;
    let mut watchers = vec![w];
    let listed = join_all(services.iter().map(|s| async move {
        let path = format!("{base}/{s}");
        match client.get_and_watch_children(&path).await {
            Ok((ids, _, w)) => Ok(Some((s.clone(), path, ids, w))),
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(e),
        }
    }))
    .await;
    let mut map = ServiceMap::new();
    for entry in listed {
        let Some((service, path, ids, w)) = entry? else {
            continue;
        };
        watchers.push(w);
        let endpoints = read_endpoints(client, &path, &ids, product).await?;
        if !endpoints.is_empty() {
            map.insert(service, endpoints);
        }
    }
    let (drained, drain_watchers) = watch_drains(client, drains).await?;
    drain::mark(&mut map, &drained);
    watchers.extend(drain_watchers);
    Ok((map, watchers))
}

/// `/zk/product/{product}/services`.
fn services_root(product: &str) -> String {
    format!("/zk/product/{product}/services")
}

/// `/zk/product/{product}/drain`.
fn drain_root(product: &str) -> String {
    format!("/zk/product/{product}/drain")
}

/// The drain marks under `root`, and watchers that fire when a mark (or a
/// service's node of marks) comes or goes. Nothing is created: while
/// `root` does not exist, its creation is watched instead.
async fn watch_drains(client: &Client, root: &str) -> Result<(DrainSet, Watchers), ZkError> {
    let (services, root_watch) = loop {
        match client.get_and_watch_children(root).await {
            Ok((services, _, w)) => break (services, w),
            Err(ZkError::NoNode) => match client.check_and_watch_stat(root).await? {
                (None, w) => return Ok((DrainSet::new(), vec![w])),
                (Some(_), _) => continue, // created meanwhile: list it
            },
            Err(e) => return Err(e),
        }
    };
    let listed = join_all(services.into_iter().map(|s| async move {
        match client.get_and_watch_children(&format!("{root}/{s}")).await {
            Ok((ids, _, w)) => Ok(Some((s, ids, w))),
            // Gone meanwhile: the watch on `root` has fired already.
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(e),
        }
    }))
    .await;
    let mut drained = DrainSet::new();
    let mut watchers = vec![root_watch];
    for entry in listed {
        if let Some((service, ids, w)) = entry? {
            watchers.push(w);
            if !ids.is_empty() {
                drained.insert(service, ids.into_iter().collect());
            }
        }
    }
    Ok((drained, watchers))
}

/// The records of the endpoint nodes `ids` under the service node `path`
/// of `product`, sorted by `service_id`; nodes gone meanwhile, malformed
/// records and records naming another product are left out.
async fn read_endpoints(
    client: &Client,
    path: &str,
    ids: &[String],
    product: &str,
) -> Result<Vec<Endpoint>, ZkError> {
    let records = join_all(ids.iter().map(|id| {
        let node = format!("{path}/{id}");
        async move { (client.get_data(&node).await, node) }
    }))
    .await;
    let mut endpoints = Vec::new();
    for (data, node) in records {
        match data {
            Ok((bytes, _)) => match crate::parse_record(&bytes, product) {
                Ok(ep) => endpoints.push(ep),
                Err(e) => warn!(node, error = %e, "ignoring an endpoint record"),
            },
            Err(ZkError::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    endpoints.sort_by(|a, b| a.service_id.cmp(&b.service_id));
    Ok(endpoints)
}

/// A one-off look at the whole tree, for operator tools: every product,
/// and one product's services read once. It sets no watch, and reading
/// creates nothing, so asking about a product that does not exist leaves
/// no trace. Its only writes are drain marks ([`ZkReader::drain`],
/// [`ZkReader::undrain`]), never under the services subtree.
pub struct ZkReader {
    client: Client,
    access: Access,
}

impl ZkReader {
    /// Connects to `hosts`; fails if no server answers within the session
    /// timeout.
    pub async fn connect(hosts: &str, session_timeout: Duration) -> Result<Self, RegistryError> {
        Self::connect_as(hosts, session_timeout, None).await
    }

    /// [`ZkReader::connect`] authenticated as `auth`: the drain marks it
    /// writes are then its identity's (see the module's documentation), and
    /// it may remove marks that identity wrote.
    pub async fn connect_as(
        hosts: &str,
        session_timeout: Duration,
        auth: Option<&ZkAuth>,
    ) -> Result<Self, RegistryError> {
        let client = new_session(hosts, session_timeout, auth)
            .await
            .map_err(|e| RegistryError::ZooKeeper(format!("connect to {hosts}: {e}")))?;
        Ok(ZkReader {
            client,
            access: Access::of(auth),
        })
    }

    /// The children of `/zk/product`, sorted; none while nothing was ever
    /// registered.
    pub async fn products(&self) -> Result<Vec<String>, RegistryError> {
        let mut products = children(&self.client, "/zk/product").await?;
        products.sort();
        Ok(products)
    }

    /// Every service of `product` with its endpoints (drain marks
    /// applied), read once. Unlike [`Registry::watch`], a service node
    /// without endpoints is kept (with none): an operator wants to see a
    /// service that lost them all.
    pub async fn services(&self, product: &str) -> Result<ServiceMap, RegistryError> {
        let base = services_root(product);
        let mut map = ServiceMap::new();
        for service in children(&self.client, &base).await? {
            let path = format!("{base}/{service}");
            let ids = children(&self.client, &path).await?;
            let endpoints = read_endpoints(&self.client, &path, &ids, product)
                .await
                .map_err(|e| RegistryError::ZooKeeper(format!("read {path}: {e}")))?;
            map.insert(service, endpoints);
        }
        drain::mark(&mut map, &self.drains(product).await?);
        Ok(map)
    }

    /// The drain marks of `product`, read once (marks of endpoints that
    /// are not registered included).
    pub async fn drains(&self, product: &str) -> Result<DrainSet, RegistryError> {
        let root = drain_root(product);
        let mut drained = DrainSet::new();
        for service in children(&self.client, &root).await? {
            let ids = children(&self.client, &format!("{root}/{service}")).await?;
            if !ids.is_empty() {
                drained.insert(service, ids.into_iter().collect());
            }
        }
        Ok(drained)
    }

    /// Marks endpoint `service_id` of `service` drained, recording `mark`;
    /// false if it was already (its mark is left as it was).
    pub async fn drain(
        &self,
        product: &str,
        service: &str,
        service_id: &str,
        mark: &DrainMark,
    ) -> Result<bool, RegistryError> {
        drain::check_names(product, service, service_id)?;
        let path = format!("{}/{service}/{service_id}", drain_root(product));
        let err = |e: ZkError| RegistryError::ZooKeeper(format!("create {path}: {}", why(&e)));
        let service = parent(&path);
        ensure_owned_dir(&self.client, self.access, parent(service), service)
            .await
            .map_err(err)?;
        let data = serde_json::to_vec(mark).expect("a drain mark serializes");
        let opts = self.access.owned(CreateMode::Persistent);
        match self.client.create(&path, &data, &opts).await {
            Ok(_) => Ok(true),
            Err(ZkError::NodeExists) => Ok(false),
            Err(e) => Err(err(e)),
        }
    }

    /// Removes the drain mark of `service_id` of `service`; false if there
    /// was none. Parents stay (empty), as services' do.
    pub async fn undrain(
        &self,
        product: &str,
        service: &str,
        service_id: &str,
    ) -> Result<bool, RegistryError> {
        drain::check_names(product, service, service_id)?;
        let path = format!("{}/{service}/{service_id}", drain_root(product));
        match self.client.delete(&path, None).await {
            Ok(()) => Ok(true),
            Err(ZkError::NoNode) => Ok(false),
            Err(e) => Err(RegistryError::ZooKeeper(format!(
                "delete {path}: {}",
                why(&e)
            ))),
        }
    }
}

/// A failed write, said so that an operator knows what to do.
fn why(e: &ZkError) -> String {
    match e {
        ZkError::NoAuth => "not allowed: the node belongs to another ZooKeeper identity \
                            (set zk_auth or zk_auth_file to the one that wrote it)"
            .into(),
        e => e.to_string(),
    }
}

/// The children of `path`; none if it does not exist.
async fn children(client: &Client, path: &str) -> Result<Vec<String>, RegistryError> {
    match client.list_children(path).await {
        Ok(c) => Ok(c),
        Err(ZkError::NoNode) => Ok(Vec::new()),
        Err(e) => Err(RegistryError::ZooKeeper(format!("list {path}: {e}"))),
    }
}
