package rpcproxy.sdk;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

import org.apache.thrift.transport.TTransportException;
import org.junit.After;
import org.junit.Before;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.Timeout;

import rpcproxy.echo.Echo;
import rpcproxy.echo.EchoError;

/** The client helper: stock generated clients through the real proxy, reconnects, the pool. */
public class ClientTest {
    @Rule
    public Timeout timeout = Timeout.seconds(90);

    private Stack stack;

    @Before
    public void up() throws Exception {
        stack = new Stack();
        stack.proxy();
        stack.service(stack.serviceConfig("echo"), "c1");
        stack.waitRoutes("echo", "c1");
    }

    @After
    public void down() throws Exception {
        stack.close();
    }

    @Test
    public void reconnectsBetweenCallsWhenTheProxyClosedTheConnection() throws Exception {
        try (ProxyClient conn = stack.client(Duration.ofSeconds(10))) {
            Echo.Client echo = conn.client(Echo.Client::new, "echo");
            assertEquals("one", echo.echo("one"));
            stack.restartProxy();
            stack.waitRoutes("echo", "c1");
            // The old connection is dead: the call goes to a new one, transparently.
            assertEquals("two", echo.echo("two"));
            assertEquals(2, conn.transport().connects());
            assertTrue(conn.usable());
        }
    }

    @Test
    public void aTimeoutClosesTheConnectionAndTheNextCallReconnects() throws Exception {
        ProxyClient conn = new ProxyClient(Address.parse(stack.proxyAddress), Duration.ofMillis(300),
                Duration.ofSeconds(5), Wire.DEFAULT_MAX_FRAME_SIZE);
        try {
            Echo.Client echo = conn.client(Echo.Client::new, "echo");
            long t0 = System.nanoTime();
            try {
                echo.sleep(2000);
                fail("no timeout");
            } catch (TTransportException e) {
                assertEquals(TTransportException.TIMED_OUT, e.getType());
            }
            long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
            assertTrue("timed out after " + ms + " ms", ms >= 250 && ms < 1500);
            assertFalse(conn.usable());
            assertEquals("back", echo.echo("back"));
            assertEquals(2, conn.transport().connects());
        } finally {
            conn.close();
        }
    }

    @Test
    public void poolBoundsConnectionsKeepsHealthyOnesAndDiscardsBrokenOnes() throws Exception {
        ClientPool pool = new ClientPool(Address.parse(stack.proxyAddress), "echo", 2, Duration.ofMillis(500),
                Duration.ofSeconds(5), Duration.ofMillis(300), Wire.DEFAULT_MAX_FRAME_SIZE);
        ExecutorService threads = Executors.newFixedThreadPool(6);
        try {
            List<Future<Long>> calls = new ArrayList<>();
            for (int i = 0; i < 6; i++) {
                long base = i * 100;
                calls.add(threads.submit(() -> {
                    long sum = 0;
                    for (int j = 0; j < 10; j++) {
                        // Callers beyond the pool's size wait for a free connection.
                        sum += retryOnPoolTimeout(() -> pool.call(Echo.Client::new, c -> c.add(base, 1)));
                    }
                    return sum;
                }));
            }
            for (int i = 0; i < 6; i++) {
                assertEquals(10 * (i * 100 + 1), (long) calls.get(i).get(30, TimeUnit.SECONDS));
            }
            assertTrue("created " + pool.created(), pool.created() <= 2);

            // A declared exception leaves the connection in the pool.
            try {
                pool.call(Echo.Client::new, c -> {
                    c.fail("declared");
                    return null;
                });
                fail("no EchoError");
            } catch (EchoError e) {
                assertEquals("declared", e.getMessage());
            }
            assertEquals(0, pool.discarded());

            // With every connection leased, the next caller gives up after acquire_timeout.
            try (ClientPool.Lease<Echo.Client> a = pool.client(Echo.Client::new);
                 ClientPool.Lease<Echo.Client> b = pool.client(Echo.Client::new)) {
                long t0 = System.nanoTime();
                try {
                    pool.client(Echo.Client::new).close();
                    fail("a third lease from a pool of 2");
                } catch (ClientPool.PoolTimeout e) {
                    long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
                    assertTrue("gave up after " + ms + " ms", ms >= 250 && ms < 2000);
                }
                assertEquals(3, a.get().add(1, 2));
                assertEquals("b", b.get().echo("b"));
            }
            assertEquals(2, pool.idle());

            // A timed-out call leaves a reply owed: that connection is closed, not returned.
            try {
                pool.call(Echo.Client::new, c -> c.sleep(2000));
                fail("no timeout");
            } catch (TTransportException e) {
                assertEquals(TTransportException.TIMED_OUT, e.getType());
            }
            assertEquals(1, pool.discarded());
            assertEquals(1, pool.idle());
            assertEquals("c1", pool.call(Echo.Client::new, c -> c.echo("who")));
        } finally {
            threads.shutdownNow();
            pool.close();
        }
    }

    @Test
    public void reachesAProxyOnAUnixSocket() throws Exception {
        String sock = stack.unixProxy();
        try (ProxyClient conn = new ProxyClient(sock, Duration.ofSeconds(10))) {
            Echo.Client echo = conn.client(Echo.Client::new, "echo");
            Stack.waitUntil(() -> {
                try {
                    return echo.echo("who").equals("c1");
                } catch (Exception e) {
                    return false;
                }
            }, Duration.ofSeconds(20), "the service through the Unix-socket proxy");
            assertEquals(7, echo.add(3, 4));
        }
    }

    private interface Attempt<T> {
        T run() throws Exception;
    }

    private static <T> T retryOnPoolTimeout(Attempt<T> a) throws Exception {
        while (true) {
            try {
                return a.run();
            } catch (ClientPool.PoolTimeout e) {
                // the pool is busy: wait again
            }
        }
    }
}
