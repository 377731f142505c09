package rpcproxy.sdk;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotEquals;
import static org.junit.Assert.assertTrue;

import java.time.Duration;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.curator.framework.CuratorFramework;
import org.apache.zookeeper.Watcher;
import org.apache.zookeeper.ZooKeeper;
import org.apache.zookeeper.data.Stat;
import org.junit.After;
import org.junit.Before;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.Timeout;

import rpcproxy.echo.Echo;

/** After its ZooKeeper session expires, a service registers again under the new session. */
public class SessionExpiryTest {
    @Rule
    public Timeout timeout = Timeout.seconds(90);

    private Stack stack;

    @Before
    public void up() throws Exception {
        stack = new Stack();
        stack.proxy();
    }

    @After
    public void down() throws Exception {
        stack.close();
    }

    @Test
    public void reRegistersAfterSessionExpiry() throws Exception {
        Config config = stack.serviceConfig("echo_exp");
        ZkRegistry registry = stack.registry();
        RpcService service = stack.service(config, "exp");
        // The service opened its own registry; watch its node from another session.
        String path = "/zk/product/test/services/echo_exp/127_0_0_1_" + config.frontPort().get();
        CuratorFramework zk = registry.client();
        Stat before = zk.checkExists().forPath(path);
        long oldSession = before.getEphemeralOwner();
        byte[] data = zk.getData().forPath(path);
        stack.waitRoutes("echo_exp", "exp");

        expire(stack.zk, oldSession, sessionPassword(service, oldSession));

        Stack.waitUntil(() -> {
            try {
                Stat s = zk.checkExists().forPath(path);
                return s != null && s.getEphemeralOwner() != oldSession;
            } catch (Exception e) {
                return false;
            }
        }, Duration.ofSeconds(30), "the node to come back under a new session");
        Stat after = zk.checkExists().forPath(path);
        assertNotEquals(oldSession, after.getEphemeralOwner());
        assertEquals("the same record", new String(data), new String(zk.getData().forPath(path)));

        // The proxy follows: calls reach the service again, and keep doing so.
        stack.waitRoutes("echo_exp", "exp");
        try (ProxyClient conn = stack.client(Duration.ofSeconds(10))) {
            Echo.Client echo = conn.client(Echo.Client::new, "echo_exp");
            for (int i = 0; i < 20; i++) {
                assertEquals(i + 1, echo.add(i, 1));
            }
        }
        service.stop();
        assertEquals("deregistered under the new session", null, zk.checkExists().forPath(path));
    }

    /** The password of the service's session, read from its registry's ZooKeeper handle. */
    private static byte[] sessionPassword(RpcService service, long session) throws Exception {
        ZooKeeper zk = service.zkRegistry().get().client().getZookeeperClient().getZooKeeper();
        assertEquals(session, zk.getSessionId());
        return zk.getSessionPasswd();
    }

    /** Expires a session the way a server does: another client attaches to it and closes it. */
    static void expire(String hosts, long session, byte[] password) throws Exception {
        CountDownLatch connected = new CountDownLatch(1);
        ZooKeeper thief = new ZooKeeper(hosts, 4000, e -> {
            if (e.getState() == Watcher.Event.KeeperState.SyncConnected) {
                connected.countDown();
            }
        }, session, password);
        try {
            assertTrue("attached to the session", connected.await(10, TimeUnit.SECONDS));
        } finally {
            thief.close();
        }
    }
}
