package rpcproxy.sdk;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.nio.charset.StandardCharsets;
import java.time.Duration;

import org.apache.curator.framework.CuratorFramework;
import org.apache.zookeeper.CreateMode;
import org.apache.zookeeper.data.Stat;
import org.junit.After;
import org.junit.Before;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.Timeout;

/** Registration rules of SPEC §6 that involve another registrant at the same path. */
public class RegistryTest {
    @Rule
    public Timeout timeout = Timeout.seconds(60);

    private Stack stack;

    @Before
    public void up() throws Exception {
        stack = new Stack();
    }

    @After
    public void down() throws Exception {
        stack.close();
    }

    @Test
    public void aLeftoverNodeIsReplacedAndASuccessorsNodeIsNotDeleted() throws Exception {
        Config config = stack.serviceConfig("echo_reg");
        String path = "/zk/product/test/services/echo_reg/127_0_0_1_" + config.frontPort().get();
        ZkRegistry other = stack.registry();
        CuratorFramework zk = other.client();
        zk.create().creatingParentsIfNeeded().withMode(CreateMode.EPHEMERAL)
                .forPath(path, "{\"service\":\"echo_reg\",\"note\":\"leftover\"}".getBytes(StandardCharsets.UTF_8));

        RpcService service = stack.service(config, "r1");
        long session = service.zkRegistry().get().sessionId();
        Stat stat = zk.checkExists().forPath(path);
        assertEquals("the service owns the node now", session, stat.getEphemeralOwner());
        String json = new String(zk.getData().forPath(path), StandardCharsets.UTF_8);
        assertTrue(json, json.contains("\"frontend\":\"" + service.address() + "\""));

        // A successor takes the path over; stopping must leave its node alone.
        zk.transaction().forOperations(
                zk.transactionOp().delete().withVersion(stat.getVersion()).forPath(path),
                zk.transactionOp().create().withMode(CreateMode.EPHEMERAL)
                        .forPath(path, "successor".getBytes(StandardCharsets.UTF_8)));
        service.stop();
        Stat after = zk.checkExists().forPath(path);
        assertNotNull("the successor's node was deleted", after);
        assertEquals(other.sessionId(), after.getEphemeralOwner());
    }

    @Test
    public void missingServiceNameAndUnreachableZooKeeperAreClearErrors() throws Exception {
        Config noService = stack.serviceConfig("x");
        noService.set("service", "");
        try {
            stack.service(noService, "n");
            fail("started without a service name");
        } catch (ZkRegistry.RegistryException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("`service`"));
        }
        Config noZk = stack.serviceConfig("x", "zk_session_timeout", 1);
        noZk.set("zk", "127.0.0.1:" + Stack.freePort());
        long t0 = System.nanoTime();
        try {
            stack.service(noZk, "n");
            fail("started without ZooKeeper");
        } catch (ZkRegistry.RegistryException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("connect to"));
        }
        assertTrue(Duration.ofNanos(System.nanoTime() - t0).toMillis() < 5000);
        // The failed starts released their ports: the same config can serve stand-alone.
        noZk.set("stand_alone", "1");
        RpcService alone = stack.service(noZk, "alone");
        assertEquals(noZk.frontAddress(), alone.address());
    }
}
