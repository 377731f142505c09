package rpcproxy.sdk;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotEquals;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

import org.apache.curator.framework.CuratorFramework;
import org.apache.thrift.TApplicationException;
import org.apache.zookeeper.data.Stat;
import org.junit.After;
import org.junit.Before;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.Timeout;

import rpcproxy.echo.Echo;
import rpcproxy.echo.EchoError;

/** A Java service behind the real rpc-proxy, registered in a real ZooKeeper. */
public class ProxyTest {
    @Rule
    public Timeout timeout = Timeout.seconds(90);

    private Stack stack;

    @Before
    public void up() throws Exception {
        stack = new Stack();
        // Fast heartbeats: a service that did not echo them would be reconnected within a second.
        stack.proxy("heartbeat_interval_ms", 100, "heartbeat_timeout_ms", 600);
    }

    @After
    public void down() throws Exception {
        stack.close();
    }

    @Test
    public void registersTheSpecNodeAndServesCallsThroughTheProxy() throws Exception {
        Config config = stack.serviceConfig("echo");
        RpcService service = new RpcService(config, new Echo.Processor<>(new EchoHandler("j1")))
                .codeUrlVersion("git@host:team/echo.git@1a2b3c4");
        service.start();
        try {
            String frontend = service.address().toString();
            assertEquals("127.0.0.1:" + config.frontPort().get(), frontend);

            ZkRegistry zk = stack.registry();
            CuratorFramework c = zk.client();
            String path = "/zk/product/test/services/echo/127_0_0_1_" + config.frontPort().get();
            Stat stat = c.checkExists().forPath(path);
            assertNotNull("no node at " + path, stat);
            assertNotEquals("the endpoint node is ephemeral", 0, stat.getEphemeralOwner());
            for (String parent : new String[] {"/zk", "/zk/product", "/zk/product/test",
                    "/zk/product/test/services", "/zk/product/test/services/echo"}) {
                Stat ps = c.checkExists().forPath(parent);
                assertEquals(parent + " is persistent", 0, ps.getEphemeralOwner());
                assertEquals(parent + " has no data", 0, ps.getDataLength());
            }
            String json = new String(c.getData().forPath(path), StandardCharsets.UTF_8);
            String expected = "{\"service\":\"echo\",\"service_id\":\"127_0_0_1_" + config.frontPort().get()
                    + "\",\"frontend\":\"" + frontend + "\",\"deploy_path\":\"" + Path.of("").toAbsolutePath()
                    + "\",\"code_url_version\":\"git@host:team/echo.git@1a2b3c4\",\"hostname\":\""
                    + Endpoint.hostname() + "\",\"start_time\":\"";
            assertTrue(json, json.startsWith(expected));
            assertTrue(json, json.substring(expected.length()).matches("\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d\"}"));

            stack.waitRoutes("echo", "j1");
            try (ProxyClient conn = stack.client(Duration.ofSeconds(10))) {
                Echo.Client echo = conn.client(Echo.Client::new, "echo");
                assertEquals("hello", echo.echo("hello"));
                assertEquals(5, echo.add(2, 3));
                try {
                    echo.fail("boom");
                    fail("no EchoError");
                } catch (EchoError e) {
                    assertEquals("boom", e.getMessage());
                }
                echo.notify("fire and forget");
                assertEquals("after oneway", echo.echo("after oneway"));
                try {
                    conn.client(Echo.Client::new, "nosuch").echo("x");
                    fail("an unknown service answered");
                } catch (TApplicationException e) {
                    assertEquals(TApplicationException.UNKNOWN, e.getType());
                    assertTrue(e.getMessage(), e.getMessage().contains("nosuch"));
                }
                assertEquals("the connection stays usable", "ok", echo.echo("ok"));
                assertEquals(1, conn.transport().connects());
            }
        } finally {
            service.stop();
        }
        assertEquals("deregistered at stop", null, stack.registry().client().checkExists()
                .forPath("/zk/product/test/services/echo/127_0_0_1_" + config.frontPort().get()));
    }

    @Test
    public void callsRunConcurrentlyAndHeartbeatsKeepTheConnection() throws Exception {
        RpcService service = stack.service(stack.serviceConfig("echo"), "j2");
        stack.waitRoutes("echo", "j2");
        long conns = service.connections();
        ClientPool pool = new ClientPool(stack.proxyAddress, "echo", 8, Duration.ofSeconds(10));
        ExecutorService threads = Executors.newFixedThreadPool(8);
        try {
            long t0 = System.nanoTime();
            List<Future<String>> calls = new ArrayList<>();
            for (int i = 0; i < 8; i++) {
                calls.add(threads.submit(() -> pool.call(Echo.Client::new, c -> c.sleep(800))));
            }
            for (Future<String> f : calls) {
                assertEquals("j2", f.get(20, TimeUnit.SECONDS));
            }
            long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
            assertTrue("8 calls of 800 ms took " + ms + " ms (in turn: 6400 ms)", ms < 4000);
            // Idle for more than two heartbeat timeouts: the proxy keeps its
            // connection only if every heartbeat was echoed.
            Thread.sleep(1500);
            assertEquals("j2", pool.call(Echo.Client::new, c -> c.echo("who")));
            assertEquals("the proxy never had to reconnect", conns, service.connections());
        } finally {
            threads.shutdownNow();
            pool.close();
        }
    }

    @Test
    public void servesOnAUnixSocket() throws Exception {
        Path sock = stack.dir.resolve("echo-java.sock");
        Config config = stack.serviceConfig("echo_unix", "front_sock", sock);
        RpcService service = stack.service(config, "unix");
        assertEquals(sock.toString(), service.address().toString());
        String path = "/zk/product/test/services/echo_unix/" + Endpoint.serviceId(sock.toString());
        String json = new String(stack.registry().client().getData().forPath(path), StandardCharsets.UTF_8);
        assertTrue(json, json.contains("\"frontend\":\"" + sock + "\""));
        stack.waitRoutes("echo_unix", "unix");
        try (ProxyClient conn = stack.client(Duration.ofSeconds(10))) {
            assertEquals(42, conn.client(Echo.Client::new, "echo_unix").add(40, 2));
        }
        service.stop();
        assertTrue("the socket file is removed at stop", !sock.toFile().exists());
    }
}
