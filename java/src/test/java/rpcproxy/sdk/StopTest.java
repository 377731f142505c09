package rpcproxy.sdk;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;

import org.apache.curator.framework.CuratorFramework;
import org.junit.After;
import org.junit.Before;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.Timeout;

import rpcproxy.echo.Echo;

/** SIGTERM under load: a Java service process leaves without failing a single call. */
public class StopTest {
    @Rule
    public Timeout timeout = Timeout.seconds(120);

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
    public void sigtermUnderLoadFailsNoCall() throws Exception {
        // B stays; A is a separate process, stopped by SIGTERM mid-load.
        stack.service(stack.serviceConfig("echo_stop"), "B");
        int portA = Stack.freePort();
        Path iniA = stack.ini("A", Stack.keys("service", "echo_stop", "front_host", "127.0.0.1",
                "front_port", portA, "zk_session_timeout", 4, "quiet_period", 0.5, "stop_timeout", 10));
        Process a = stack.childService("A", iniA);
        String nodeA = "/zk/product/test/services/echo_stop/127_0_0_1_" + portA;
        CuratorFramework zk = stack.registry().client();
        Stack.waitUntil(() -> exists(zk, nodeA) || !a.isAlive(), Duration.ofSeconds(30), "A to register");
        assertTrue("A exited at start:\n" + stack.log("A"), a.isAlive());

        Map<String, AtomicInteger> answers = new ConcurrentHashMap<>();
        List<String> failures = new ArrayList<>();
        AtomicBoolean running = new AtomicBoolean(true);
        ClientPool pool = new ClientPool(stack.proxyAddress, "echo_stop", 6, Duration.ofSeconds(15));
        List<Thread> load = new ArrayList<>();
        for (int i = 0; i < 6; i++) {
            Thread t = new Thread(() -> {
                while (running.get()) {
                    try {
                        String who = pool.call(Echo.Client::new, c -> c.sleep(20));
                        answers.computeIfAbsent(who, k -> new AtomicInteger()).incrementAndGet();
                    } catch (Exception e) {
                        synchronized (failures) {
                            failures.add(e.toString());
                        }
                    }
                }
            });
            t.start();
            load.add(t);
        }
        try {
            Stack.waitUntil(() -> count(answers, "A") >= 30 && count(answers, "B") >= 30, Duration.ofSeconds(30),
                    "both services to answer calls");
            int beforeStop = count(answers, "A");
            a.destroy(); // SIGTERM
            long t0 = System.nanoTime();
            // The node must go while A is still running (deregister first).
            AtomicBoolean aliveWhenGone = new AtomicBoolean();
            Stack.waitUntil(() -> {
                if (exists(zk, nodeA)) {
                    return false;
                }
                aliveWhenGone.set(a.isAlive());
                return true;
            }, Duration.ofSeconds(10), "A's node to go");
            assertTrue("A deregisters before it exits", aliveWhenGone.get());
            assertTrue("A did not exit:\n" + stack.log("A"), a.waitFor(15, TimeUnit.SECONDS));
            long stopMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
            assertEquals("A's exit status\n" + stack.log("A"), 0, a.exitValue());
            assertTrue("A answered calls during its stop", count(answers, "A") > beforeStop);
            int bAfter = count(answers, "B");
            Stack.waitUntil(() -> count(answers, "B") >= bAfter + 30, Duration.ofSeconds(20), "B to keep serving");
            assertTrue("stop took " + stopMs + " ms", stopMs < 10_000);
        } finally {
            running.set(false);
            for (Thread t : load) {
                t.join(20_000);
            }
            pool.close();
        }
        synchronized (failures) {
            assertEquals("failed calls: " + failures, 0, failures.size());
        }
        String log = stack.log("A");
        int deregistered = log.indexOf("INFO: deregistered");
        int stopped = log.indexOf("INFO: service stopped");
        assertTrue(log, deregistered >= 0 && stopped > deregistered);
    }

    private static boolean exists(CuratorFramework zk, String path) {
        try {
            return zk.checkExists().forPath(path) != null;
        } catch (Exception e) {
            return true; // unknown yet: look again
        }
    }

    private static int count(Map<String, AtomicInteger> answers, String who) {
        AtomicInteger n = answers.get(who);
        return n == null ? 0 : n.get();
    }
}
