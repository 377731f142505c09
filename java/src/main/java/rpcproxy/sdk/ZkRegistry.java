package rpcproxy.sdk;

import java.io.Closeable;
import java.time.Duration;
import java.util.List;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.logging.Level;
import java.util.logging.Logger;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.api.transaction.TransactionOp;
import org.apache.curator.framework.state.ConnectionState;
import org.apache.curator.retry.RetryNTimes;
import org.apache.zookeeper.CreateMode;
import org.apache.zookeeper.KeeperException;
import org.apache.zookeeper.ZooDefs.Ids;
import org.apache.zookeeper.ZooDefs.Perms;
import org.apache.zookeeper.data.ACL;
import org.apache.zookeeper.data.Stat;

/**
 * Endpoint registration in ZooKeeper (SPEC §6), as the Rust registry does
 * it: parents are persistent znodes with empty data; the endpoint is an
 * ephemeral node holding the JSON record; a node another session left at
 * the same path is replaced in one transaction (watchers never see the
 * endpoint missing in between); after a session expiry the node is created
 * again under the new session; deregistering deletes the node only if it
 * is still ours.
 *
 * <p>One Curator client (one session) per registry; a keeper thread
 * publishes every registration whenever the session it was published under
 * is no longer the current one, retrying every 200 ms while ZooKeeper does
 * not answer.
 *
 * <h2>Credentials and ACLs</h2>
 *
 * Without credentials every node is created open to all ({@code world:anyone}
 * with all permissions), as the original did. With a {@link ZkAuth}
 * ({@code zk_auth} or {@code zk_auth_file}) the session authenticates with it
 * (Curator sends it again on every new session) and the nodes it creates get
 * the ACLs the Rust registry gives ({@code rpc_registry::zk}):
 * <ul>
 * <li>shared parents {@code /zk}, {@code /zk/product},
 * {@code /zk/product/{product}}, its {@code services}: {@code world:anyone}
 * READ + CREATE ({@link #SHARED_ACL});
 * <li>a service's node {@code …/services/{service}}: its creator's identity
 * ALL, {@code world:anyone} READ ({@link #OWNED_ACL});
 * <li>an endpoint (ephemeral): the same as its service's node.
 * </ul>
 * ZooKeeper checks a delete against the parent's ACL and a write against
 * the node's own: anyone can read everything, anyone may add a service
 * under a product, nobody can remove the shared parents, and only the
 * identity that created a service's node may add, replace, remove or
 * rewrite that service's endpoints. A registrant whose service node belongs
 * to another identity gets a clear error. Nodes that already exist keep
 * their ACL; a service node that lets anyone delete its children (created
 * without credentials) is warned about.
 */
public final class ZkRegistry implements Closeable {
    private static final Logger LOG = Logger.getLogger(ZkRegistry.class.getName());
    /** Pause between retries of a failed ZooKeeper operation. */
    private static final long RETRY_MS = 200;

    /** Shared parents, with credentials: everyone may read them and add children. */
    public static final List<ACL> SHARED_ACL = List.of(new ACL(Perms.READ | Perms.CREATE, Ids.ANYONE_ID_UNSAFE));
    /** A service's node and its endpoints, with credentials: the creator's identity all, everyone read. */
    public static final List<ACL> OWNED_ACL = List.of(
            new ACL(Perms.ALL, Ids.AUTH_IDS), new ACL(Perms.READ, Ids.ANYONE_ID_UNSAFE));

    private final CuratorFramework client;
    private final String hosts;
    private final String product;
    private final Duration sessionTimeout;
    /** Null: no credentials, nodes open to all. */
    private final ZkAuth auth;
    private final List<Registration> registrations = new CopyOnWriteArrayList<>();
    private final Object wake = new Object();
    /** Held while a node is being created or deleted: a deregistration never races a publish. */
    private final Object ops = new Object();
    private final Thread keeper;
    private volatile boolean closed;

    /** A registry for {@code product} at {@code hosts}; fails if no server answers within the session timeout. */
    public static ZkRegistry connect(String hosts, String product, Duration sessionTimeout) throws RegistryException {
        return new ZkRegistry(hosts, product, sessionTimeout, null);
    }

    /**
     * {@link #connect(String, String, Duration)} authenticated as {@code auth}
     * (none if null): the nodes it creates get the ACLs the class documentation lists.
     */
    public static ZkRegistry connect(String hosts, String product, Duration sessionTimeout, ZkAuth auth)
            throws RegistryException {
        return new ZkRegistry(hosts, product, sessionTimeout, auth);
    }

    /**
     * The registry a configuration names ({@code zk}, {@code product},
     * {@code zk_session_timeout}, and {@code zk_auth} or {@code zk_auth_file}).
     */
    public static ZkRegistry open(Config config) throws RegistryException {
        String hosts = config.zk().orElseThrow(() -> new RegistryException(config.localRegistry().isPresent()
                ? "zk=" + config.localRegistry().get() + " names the embedded registry, not ZooKeeper: "
                        + "use LocalRegistry.open (RpcService does when zk names it)"
                : "`zk` is not set (or set stand_alone=1)"));
        return connect(hosts, config.product(), config.zkSessionTimeout(), config.zkAuth().orElse(null));
    }

    private ZkRegistry(String hosts, String product, Duration sessionTimeout, ZkAuth auth) throws RegistryException {
        this.hosts = hosts;
        this.product = product;
        this.sessionTimeout = sessionTimeout;
        this.auth = auth;
        int sessionMs = (int) Math.max(1, Math.min(Integer.MAX_VALUE, sessionTimeout.toMillis()));
        CuratorFrameworkFactory.Builder builder = CuratorFrameworkFactory.builder()
                .connectString(hosts)
                .sessionTimeoutMs(sessionMs)
                .connectionTimeoutMs(Math.min(1000, sessionMs))
                .retryPolicy(new RetryNTimes(2, 100))
                .defaultData(new byte[0]);
        if (auth != null) {
            // Curator adds it to every ZooKeeper handle it makes: each new session authenticates again.
            builder.authorization(ZkAuth.SCHEME, auth.credentials());
        }
        client = builder.build();
        client.getConnectionStateListenable().addListener((c, state) -> {
            if (state == ConnectionState.LOST) {
                LOG.warning("ZooKeeper session lost (" + hosts + ")");
            } else if (state == ConnectionState.SUSPENDED) {
                LOG.warning("ZooKeeper connection lost (" + hosts + ")");
            } else if (state == ConnectionState.RECONNECTED) {
                LOG.info("ZooKeeper connection back (" + hosts + ")");
            }
            synchronized (wake) {
                wake.notifyAll();
            }
        });
        client.start();
        try {
            if (!client.blockUntilConnected(sessionMs, TimeUnit.MILLISECONDS)) {
                client.close();
                throw new RegistryException("connect to " + hosts + ": no answer within " + sessionTimeout);
            }
        } catch (InterruptedException e) {
            client.close();
            Thread.currentThread().interrupt();
            throw new RegistryException("connect to " + hosts + ": interrupted");
        }
        LOG.info("connected to ZooKeeper " + hosts + ", session 0x" + Long.toHexString(sessionId())
                + (auth != null ? ", as " + auth : ""));
        keeper = new Thread(this::keep, "rpc-registry");
        keeper.setDaemon(true);
        keeper.start();
    }

    /** The current session id (0 while none is established). */
    public long sessionId() {
        try {
            if (!client.getZookeeperClient().isConnected()) {
                return 0;
            }
            return client.getZookeeperClient().getZooKeeper().getSessionId();
        } catch (Exception e) {
            return 0;
        }
    }

    /** The underlying Curator client (tests inspect the tree with it). */
    public CuratorFramework client() {
        return client;
    }

    public String hosts() {
        return hosts;
    }

    public String product() {
        return product;
    }

    /** The identity this registry authenticates as ({@code digest:user} when printed), if any. */
    public Optional<ZkAuth> auth() {
        return Optional.ofNullable(auth);
    }

    /**
     * Publishes {@code endpoint} (replacing a leftover node at its path) and
     * keeps it published across session expiry until deregistered. Fails if
     * it could not be created within twice the session timeout (at least
     * 10 s): a registrant starting while ZooKeeper is away gets an error
     * rather than hanging; once registered it survives outages.
     */
    public Registration register(Endpoint endpoint) throws RegistryException {
        Registration r = new Registration(endpoint.path(product), endpoint.toJsonBytes());
        registrations.add(r);
        synchronized (wake) {
            wake.notifyAll();
        }
        long waitMs = Math.max(sessionTimeout.toMillis(), 5000) * 2;
        long end = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(waitMs);
        synchronized (r) {
            while (r.publishedSession == 0) {
                if (r.refused != null) {
                    registrations.remove(r);
                    throw new RegistryException(r.refused);
                }
                long left = TimeUnit.NANOSECONDS.toMillis(end - System.nanoTime());
                if (left <= 0 || closed) {
                    registrations.remove(r);
                    throw new RegistryException("could not create " + r.path + " within " + waitMs + " ms");
                }
                try {
                    r.wait(left);
                } catch (InterruptedException e) {
                    registrations.remove(r);
                    Thread.currentThread().interrupt();
                    throw new RegistryException("interrupted while registering " + r.path);
                }
            }
        }
        return r;
    }

    /** Publishes whatever is not published under the current session; sleeps until woken or the retry period. */
    private void keep() {
        while (!closed) {
            boolean failed = false;
            long sid = sessionId();
            if (sid != 0) {
                for (Registration r : registrations) {
                    if (r.stopped || r.publishedSession == sid) {
                        continue;
                    }
                    try {
                        synchronized (ops) {
                            if (r.stopped) {
                                continue;
                            }
                            publish(r.path, r.data, sid);
                        }
                        LOG.info("registered " + r.path + " (session 0x" + Long.toHexString(sid) + ")");
                        synchronized (r) {
                            if (!r.stopped) {
                                r.publishedSession = sid;
                            }
                            r.notifyAll();
                        }
                    } catch (InterruptedException e) {
                        return;
                    } catch (KeeperException.NoAuthException e) {
                        if (r.publishedSession == 0) {
                            // Never registered: refused for good (the service's node is
                            // another identity's), not an outage to wait out.
                            registrations.remove(r);
                            synchronized (r) {
                                r.refused = "not allowed to register " + r.path + ": its service's node belongs to "
                                        + "another ZooKeeper identity (zk_auth), or was created by one while this "
                                        + "registrant has none";
                                r.notifyAll();
                            }
                        } else {
                            failed = true;
                            LOG.warning("register " + r.path + " refused (NoAuth); retrying");
                        }
                    } catch (Exception e) {
                        failed = true;
                        LOG.log(Level.FINE, "register " + r.path + " failed; retrying", e);
                    }
                }
            }
            synchronized (wake) {
                try {
                    // Session ids are also polled: an expiry is noticed even if no state event woke us.
                    wake.wait(failed || sid == 0 ? RETRY_MS : RETRY_MS * 5);
                } catch (InterruptedException e) {
                    return;
                }
            }
        }
    }

    /** The parent of an absolute path. */
    private static String parent(String path) {
        return path.substring(0, path.lastIndexOf('/'));
    }

    /** ACL of the shared parents: open to all without credentials. */
    private List<ACL> sharedAcl() {
        return auth == null ? Ids.OPEN_ACL_UNSAFE : SHARED_ACL;
    }

    /** ACL of a service's node and its endpoints: open to all without credentials. */
    private List<ACL> ownedAcl() {
        return auth == null ? Ids.OPEN_ACL_UNSAFE : OWNED_ACL;
    }

    /** Creates {@code path} (persistent, empty, with {@code acl}) unless it exists; its parent must exist. */
    private boolean createIfMissing(String path, List<ACL> acl) throws Exception {
        if (client.checkExists().forPath(path) != null) {
            return false;
        }
        try {
            client.create().withMode(CreateMode.PERSISTENT).withACL(acl).forPath(path, new byte[0]);
            return true;
        } catch (KeeperException.NodeExistsException e) {
            return false; // created meanwhile by another registrant
        }
    }

    /**
     * Creates the shared parents up to {@code parent(service)} with the shared
     * ACL, then the service's node, owned, if missing (the Rust registry's
     * {@code ensure_owned_dir}). With credentials, warns when an existing
     * service node lets anyone delete its children.
     */
    private void ensureServiceNode(String service) throws Exception {
        String shared = parent(service);
        int i = 0;
        while ((i = shared.indexOf('/', i + 1)) > 0) {
            createIfMissing(shared.substring(0, i), sharedAcl());
        }
        createIfMissing(shared, sharedAcl());
        if (!createIfMissing(service, ownedAcl()) && auth != null) {
            List<ACL> acl = client.getACL().forPath(service);
            boolean open = acl.stream().anyMatch(a -> a.getId().equals(Ids.ANYONE_ID_UNSAFE)
                    && (a.getPerms() & Perms.DELETE) != 0);
            if (open) {
                LOG.warning(service + ": this node lets anyone delete its children (it was created without "
                        + "credentials): what is registered under it is not protected; restrict it with setAcl");
            }
        }
    }

    private void publish(String path, byte[] data, long sid) throws Exception {
        ensureServiceNode(parent(path));
        for (int i = 0; i < 3; i++) {
            Stat stat = client.checkExists().forPath(path);
            if (stat != null && stat.getEphemeralOwner() == sid) {
                return; // already ours (a retry after a lost reply)
            }
            try {
                if (stat != null) {
                    // Another session's node (a leftover, or a predecessor handing its
                    // endpoint over): replaced in one transaction.
                    TransactionOp op = client.transactionOp();
                    client.transaction().forOperations(
                            op.delete().withVersion(stat.getVersion()).forPath(path),
                            op.create().withMode(CreateMode.EPHEMERAL).withACL(ownedAcl()).forPath(path, data));
                } else {
                    client.create().withMode(CreateMode.EPHEMERAL).withACL(ownedAcl()).forPath(path, data);
                }
                return;
            } catch (KeeperException.NoNodeException | KeeperException.BadVersionException
                     | KeeperException.NodeExistsException e) {
                // changed or gone meanwhile: look again
            }
        }
        throw new RegistryException("could not take over " + path);
    }

    /** Deletes the node of {@code r} if it is still ours (at most about 2 s). */
    private void unpublish(Registration r) {
        long sid = sessionId();
        if (sid == 0) {
            return; // no session: an ephemeral node of ours goes with it
        }
        CompletableFuture<Void> done = CompletableFuture.runAsync(() -> {
            synchronized (ops) {
                unpublishNow(r, sid);
            }
        });
        try {
            done.get(2, TimeUnit.SECONDS);
        } catch (Exception e) {
            LOG.warning("deregister " + r.path + " did not finish: " + e);
        }
    }

    private void unpublishNow(Registration r, long sid) {
        try {
            Stat stat = client.checkExists().forPath(r.path);
            if (stat != null && stat.getEphemeralOwner() == sid) {
                client.delete().withVersion(stat.getVersion()).forPath(r.path);
                LOG.info("deregistered " + r.path);
            }
        } catch (Exception e) {
            LOG.warning("deregister " + r.path + " failed: " + e);
        }
    }

    /** Stops publishing; the session closes, so any node of ours goes with it. */
    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        synchronized (wake) {
            wake.notifyAll();
        }
        keeper.interrupt();
        try {
            keeper.join(2000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        client.close();
    }

    /** A live registration; {@link #deregister()} removes the node and waits until it is gone. */
    public final class Registration {
        final String path;
        final byte[] data;
        /** Session the node was last created under; 0 before the first time. */
        volatile long publishedSession;
        volatile boolean stopped;
        /** Why ZooKeeper refused the first publish for good (NoAuth); null otherwise. */
        volatile String refused;

        Registration(String path, byte[] data) {
            this.path = path;
            this.data = data;
        }

        public String path() {
            return path;
        }

        public void deregister() {
            synchronized (this) {
                if (stopped) {
                    return;
                }
                stopped = true;
            }
            registrations.remove(this);
            unpublish(this);
        }
    }

    public static final class RegistryException extends Exception {
        private static final long serialVersionUID = 1L;

        public RegistryException(String message) {
            super(message);
        }
    }
}
