package rpcproxy.sdk;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.junit.After;
import org.junit.Before;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.Timeout;

import rpcproxy.echo.Echo;

/**
 * A Java service in the embedded local registry ({@code zk = local:DIR}),
 * routed to by the real rpc-proxy reading the same directory.
 */
public class LocalRegistryTest {
    @Rule
    public Timeout timeout = Timeout.seconds(120);

    private Stack stack;
    private Path reg;
    private String zk;

    @Before
    public void up() throws Exception {
        stack = new Stack();
        reg = stack.dir.resolve("registry");
        zk = "local:" + reg;
        stack.proxy("zk", zk);
    }

    @After
    public void down() throws Exception {
        stack.close();
    }

    private Path file(String service, int port) {
        return reg.resolve("test/services/" + service + "/127_0_0_1_" + port + ".json");
    }

    private static String read(Path p) {
        try {
            return Files.readString(p, StandardCharsets.UTF_8);
        } catch (Exception e) {
            return "";
        }
    }

    private static long number(String json, String field) {
        Matcher m = Pattern.compile("\"" + field + "\": (\\d+)").matcher(json);
        assertTrue(field + " in " + json, m.find());
        return Long.parseUnsignedLong(m.group(1));
    }

    /** True when a call to {@code service} through the proxy fails (no endpoint) rather than answering. */
    private boolean notRouted(String service) {
        try (ProxyClient c = stack.client(Duration.ofSeconds(5))) {
            c.client(Echo.Client::new, service).echo("who");
            return false;
        } catch (Exception e) {
            return true;
        }
    }

    @Test
    public void theProxyRoutesToAJavaServiceInTheLocalRegistry() throws Exception {
        Config config = stack.serviceConfig("echo_local", "zk", zk);
        int port = config.frontPort().get();
        RpcService service = new RpcService(config, new Echo.Processor<>(new EchoHandler("jl")))
                .codeUrlVersion("git@host:team/echo.git@1a2b3c4");
        service.start();
        Path f = file("echo_local", port);
        assertEquals(f, service.localRegistry().get().file(
                Endpoint.of("echo_local", "127.0.0.1:" + port, "")));
        assertTrue("no file at " + f, Files.isRegularFile(f));
        String json = read(f);
        // The Rust registry's record: SPEC §6 fields, product, then the owner.
        String expected = "{\n  \"service\": \"echo_local\",\n  \"service_id\": \"127_0_0_1_" + port
                + "\",\n  \"frontend\": \"127.0.0.1:" + port + "\",\n  \"deploy_path\": \""
                + Path.of("").toAbsolutePath() + "\",\n  \"code_url_version\": \"git@host:team/echo.git@1a2b3c4\",\n"
                + "  \"hostname\": \"" + Endpoint.hostname() + "\",\n  \"start_time\": \"";
        assertTrue(json, json.startsWith(expected));
        assertTrue(json, json.substring(expected.length()).matches(
                "\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d\",\n  \"product\": \"test\",\n  \"pid\": \\d+,\n"
                        + "  \"pid_start\": \\d+,\n  \"token\": \\d+\n}"));
        long pid = ProcessHandle.current().pid();
        assertEquals(pid, number(json, "pid"));
        String stat = Files.readString(Path.of("/proc/self/stat"));
        long start = Long.parseLong(stat.substring(stat.lastIndexOf(')') + 2).split(" ")[19]);
        assertEquals(start, number(json, "pid_start"));
        assertTrue("the token is set", number(json, "token") != 0);
        try (java.util.stream.Stream<Path> s = Files.list(f.getParent())) {
            assertEquals("no temporary file is left", 1, s.count());
        }

        stack.waitRoutes("echo_local", "jl");
        try (ProxyClient c = stack.client(Duration.ofSeconds(5))) {
            Echo.Client echo = c.client(Echo.Client::new, "echo_local");
            assertEquals("hello", echo.echo("hello"));
            assertEquals(5, echo.add(2, 3));
        }

        // A file removed by hand is written again within about a second.
        Files.delete(f);
        long t0 = System.nanoTime();
        Stack.waitUntil(() -> Files.isRegularFile(f), Duration.ofSeconds(3), "the file to be written again");
        assertTrue("re-registered in " + (System.nanoTime() - t0) / 1_000_000 + " ms",
                System.nanoTime() - t0 < TimeUnit.MILLISECONDS.toNanos(2500));
        assertEquals("the same record", json, read(f));
        stack.waitRoutes("echo_local", "jl");

        // Stop: the file goes, and the proxy no longer routes to the service.
        service.stop();
        assertFalse("the file is removed at stop", Files.exists(f));
        Stack.waitUntil(() -> notRouted("echo_local"), Duration.ofSeconds(10), "the proxy to stop routing");
    }

    @Test
    public void anEntryTakenByAnotherOwnerIsLeftAlone() throws Exception {
        Config config = stack.serviceConfig("echo_taken", "zk", zk);
        RpcService service = stack.service(config, "jt");
        Path f = file("echo_taken", config.frontPort().get());
        // A successor (this process, another token) takes the entry over.
        String theirs = read(f).replaceAll("\"token\": \\d+", "\"token\": 7");
        LocalRegistry.writeAtomically(f, theirs.getBytes(StandardCharsets.UTF_8));
        Thread.sleep(2500); // two checks: the first registrant must not write over it
        assertEquals(theirs, read(f));
        service.stop();
        assertEquals("stopping does not remove another owner's entry", theirs, read(f));
    }

    @Test
    public void sigtermDeregistersBeforeTheProcessExits() throws Exception {
        int port = Stack.freePort();
        Path ini = stack.ini("A", Stack.keys("zk", zk, "service", "echo_term", "front_host", "127.0.0.1",
                "front_port", port, "quiet_period", 0.5, "stop_timeout", 10));
        Process a = stack.childService("A", ini);
        Path f = file("echo_term", port);
        Stack.waitUntil(() -> Files.isRegularFile(f) || !a.isAlive(), Duration.ofSeconds(30), "A to register");
        assertTrue("A exited at start:\n" + stack.log("A"), a.isAlive());
        assertEquals("the file names the child's pid", a.pid(), number(read(f), "pid"));
        assertEquals(LocalRegistry.processStart(a.pid()), number(read(f), "pid_start"));
        stack.waitRoutes("echo_term", "A");

        a.destroy(); // SIGTERM
        AtomicBoolean aliveWhenGone = new AtomicBoolean();
        Stack.waitUntil(() -> {
            if (Files.exists(f)) {
                return false;
            }
            aliveWhenGone.set(a.isAlive());
            return true;
        }, Duration.ofSeconds(10), "A's file to go");
        assertTrue("A deregisters before it exits", aliveWhenGone.get());
        assertTrue("A did not exit:\n" + stack.log("A"), a.waitFor(15, TimeUnit.SECONDS));
        assertEquals("A's exit status\n" + stack.log("A"), 0, a.exitValue());
        Stack.waitUntil(() -> notRouted("echo_term"), Duration.ofSeconds(10), "the proxy to stop routing");
        String log = stack.log("A");
        int deregistered = log.indexOf("INFO: deregistered");
        int stopped = log.indexOf("INFO: service stopped");
        assertTrue(log, deregistered >= 0 && stopped > deregistered);
    }

    @Test
    public void theEntryOfAKilledServiceDisappears() throws Exception {
        int port = Stack.freePort();
        Path ini = stack.ini("K", Stack.keys("zk", zk, "service", "echo_kill", "front_host", "127.0.0.1",
                "front_port", port));
        Process k = stack.childService("K", ini);
        Path f = file("echo_kill", port);
        Stack.waitUntil(() -> Files.isRegularFile(f) || !k.isAlive(), Duration.ofSeconds(30), "K to register");
        assertTrue("K exited at start:\n" + stack.log("K"), k.isAlive());
        stack.waitRoutes("echo_kill", "K");
        k.destroyForcibly(); // SIGKILL: no deregistration
        k.waitFor(10, TimeUnit.SECONDS);
        // The proxy's watcher removes the entry of the dead owner.
        Stack.waitUntil(() -> !Files.exists(f), Duration.ofSeconds(10), "the dead service's file to be removed");
        Stack.waitUntil(() -> notRouted("echo_kill"), Duration.ofSeconds(10), "the proxy to stop routing");
    }

    @Test
    public void aLinkedProductDirectoryIsRefused() throws Exception {
        Path other = stack.dir.resolve("elsewhere");
        Files.createDirectories(other.resolve("services"));
        Path linked = stack.dir.resolve("linked");
        Files.createDirectories(linked);
        Files.createSymbolicLink(linked.resolve("test"), other);
        Config config = stack.serviceConfig("echo_link", "zk", "local:" + linked);
        RpcService service = new RpcService(config, new Echo.Processor<>(new EchoHandler("x")));
        try {
            service.start();
            fail("started on a linked product directory");
        } catch (ZkRegistry.RegistryException e) {
            assertTrue(e.getMessage(), e.getMessage().contains(linked.resolve("test").toString())
                    && e.getMessage().contains("symbolic link"));
        }
        assertTrue("stopped", service.awaitStopped(Duration.ofSeconds(5)));
        try (java.util.stream.Stream<Path> s = Files.list(other.resolve("services"))) {
            assertEquals("nothing written through the link", 0, s.count());
        }
        // A linked services directory too.
        Path linked2 = stack.dir.resolve("linked2");
        Files.createDirectories(linked2.resolve("test"));
        Files.createSymbolicLink(linked2.resolve("test/services"), other.resolve("services"));
        try {
            LocalRegistry.open(linked2, "test").close();
            fail("opened a linked services directory");
        } catch (ZkRegistry.RegistryException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("symbolic link"));
        }
    }

    @Test
    public void localMeansTheRustDefaultDirectory() {
        String env = System.getenv("RPC_REGISTRY_DIR");
        String tmp = System.getenv("TMPDIR");
        Path expected = env != null ? Path.of(env)
                : Path.of(tmp != null ? tmp : "/tmp").resolve("rpc_proxy-registry");
        assertEquals(expected, LocalRegistry.defaultDir());
        assertEquals(expected, LocalRegistry.dirOf(Config.parse("").localRegistry().get()));
        assertEquals(expected, LocalRegistry.dirOf(Config.parse("zk = local").localRegistry().get()));
        assertEquals(Path.of("/var/reg"), LocalRegistry.dirOf(Config.parse("zk = local:/var/reg").localRegistry().get()));
    }
}
