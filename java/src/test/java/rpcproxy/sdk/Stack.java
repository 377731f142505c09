package rpcproxy.sdk;

import static org.junit.Assert.fail;

import java.io.File;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;

import org.apache.zookeeper.server.ServerCnxnFactory;
import org.apache.zookeeper.server.ZooKeeperServer;

import rpcproxy.echo.Echo;

/**
 * One test's real components on loopback: a throwaway ZooKeeper (in this
 * JVM, on a free port, data in a temporary directory), the real
 * {@code rpc-proxy} binary, Java services in this JVM or as child
 * processes. {@link #close()} stops all of it.
 */
final class Stack implements AutoCloseable {
    final Path dir;
    final String zk;
    private final ZooKeeperServer zkServer;
    private final ServerCnxnFactory zkFactory;
    private final List<Process> procs = new ArrayList<>();
    private final List<RpcService> services = new ArrayList<>();
    private final List<AutoCloseable> closeables = new ArrayList<>();
    String proxyAddress;
    private Process proxyProc;
    private List<String> proxyArgv;
    private int proxyPort;
    private int n;

    Stack() throws Exception {
        dir = Files.createTempDirectory("rpc-java-test");
        File data = dir.resolve("zk").toFile();
        data.mkdirs();
        // tickTime 500 ms: negotiated sessions may last 1 s to 10 s.
        zkServer = new ZooKeeperServer(data, data, 500);
        zkFactory = ServerCnxnFactory.createFactory(new InetSocketAddress("127.0.0.1", 0), 100);
        zkFactory.startup(zkServer);
        zk = "127.0.0.1:" + zkFactory.getLocalPort();
    }

    static int freePort() throws IOException {
        try (ServerSocket s = new ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress())) {
            return s.getLocalPort();
        }
    }

    static Path binDir() {
        String d = System.getenv("RPC_BIN_DIR");
        if (d != null && !d.isEmpty()) {
            return Path.of(d);
        }
        return Path.of(System.getProperty("rpc.repo", "..")).resolve("target/debug");
    }

    static void waitUntil(BooleanSupplier cond, Duration timeout, String what) {
        long end = System.nanoTime() + timeout.toNanos();
        while (!cond.getAsBoolean()) {
            if (System.nanoTime() - end > 0) {
                fail("timed out after " + timeout.toMillis() + " ms waiting for " + what);
            }
            try {
                Thread.sleep(20);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                fail("interrupted waiting for " + what);
            }
        }
    }

    static boolean portOpen(int port) {
        try (Socket s = new Socket()) {
            s.connect(new InetSocketAddress("127.0.0.1", port), 200);
            return true;
        } catch (IOException e) {
            return false;
        }
    }

    /** A config.ini with {@code zk} and {@code product=test} plus {@code keys}; returns its path. */
    Path ini(String name, Map<String, Object> keys) throws IOException {
        Map<String, Object> all = new LinkedHashMap<>();
        all.put("zk", zk);
        all.put("product", "test");
        all.putAll(keys);
        StringBuilder b = new StringBuilder();
        all.forEach((k, v) -> b.append(k).append(" = ").append(v).append('\n'));
        Path p = dir.resolve(name + ".ini");
        Files.writeString(p, b.toString(), StandardCharsets.UTF_8);
        return p;
    }

    static Map<String, Object> keys(Object... kv) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) {
            m.put((String) kv[i], kv[i + 1]);
        }
        return m;
    }

    /** Starts the real rpc-proxy on a free port; returns its address. */
    String proxy(Object... extra) throws Exception {
        Path bin = binDir().resolve("rpc-proxy");
        if (!Files.isExecutable(bin)) {
            fail("rpc-proxy not found at " + bin + " (build it, or set RPC_BIN_DIR)");
        }
        int port = freePort();
        String name = "proxy-" + (++n);
        Map<String, Object> k = keys("proxy_address", "127.0.0.1:" + port, "rpc_timeout", 10);
        k.putAll(keys(extra));
        Path ini = ini(name, k);
        proxyArgv = List.of(bin.toString(), "-c", ini.toString());
        proxyPort = port;
        proxyProc = startProxy(name);
        proxyAddress = "127.0.0.1:" + port;
        return proxyAddress;
    }

    private Process startProxy(String name) throws IOException {
        Process p = start(name, proxyArgv);
        waitUntil(() -> portOpen(proxyPort) || !p.isAlive(), Duration.ofSeconds(20), name + " to listen");
        if (!p.isAlive()) {
            fail(name + " exited at start:\n" + log(name));
        }
        return p;
    }

    /** Kills the proxy (its connections close) and starts it again on the same address. */
    void restartProxy() throws Exception {
        proxyProc.destroyForcibly();
        proxyProc.waitFor(10, TimeUnit.SECONDS);
        proxyProc = startProxy("proxy-" + (++n));
    }

    /** Starts a second rpc-proxy listening on a Unix socket; returns its path. */
    String unixProxy() throws Exception {
        Path bin = binDir().resolve("rpc-proxy");
        String name = "proxy-" + (++n);
        Path sock = dir.resolve(name + ".sock");
        Path ini = ini(name, keys("proxy_address", sock, "rpc_timeout", 10));
        Process p = start(name, List.of(bin.toString(), "-c", ini.toString()));
        waitUntil(() -> Files.exists(sock) || !p.isAlive(), Duration.ofSeconds(20), name + " to listen");
        if (!p.isAlive()) {
            fail(name + " exited at start:\n" + log(name));
        }
        return sock.toString();
    }

    /** A config for a Java service of {@code service} on a free loopback port, with short stop timings. */
    Config serviceConfig(String service, Object... extra) throws IOException {
        Map<String, Object> k = keys("service", service, "front_host", "127.0.0.1", "front_port", freePort(),
                "zk_session_timeout", 4, "quiet_period", 0.5, "stop_timeout", 10);
        k.putAll(keys(extra));
        return Config.load(ini("service-" + (++n), k));
    }

    /** Starts an Echo service in this JVM (stopped at close unless already stopped). */
    RpcService service(Config config, String name) throws Exception {
        RpcService s = new RpcService(config, new Echo.Processor<>(new EchoHandler(name)));
        s.start();
        services.add(s);
        return s;
    }

    /** Starts {@link EchoServer} in a child JVM with a config for {@code service}; returns the process and its ini. */
    Process childService(String name, Path ini) throws IOException {
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        return start(name, List.of(java, "-Xshare:auto", "-XX:TieredStopAtLevel=1", "-cp",
                System.getProperty("java.class.path"), EchoServer.class.getName(), "-c", ini.toString(), name));
    }

    Process start(String name, List<String> argv) throws IOException {
        ProcessBuilder pb = new ProcessBuilder(argv);
        pb.redirectErrorStream(true);
        pb.redirectOutput(dir.resolve(name + ".log").toFile());
        pb.directory(dir.toFile());
        Process p = pb.start();
        procs.add(p);
        return p;
    }

    String log(String name) {
        try {
            String s = Files.readString(dir.resolve(name + ".log"), StandardCharsets.UTF_8);
            return s.length() > 4000 ? s.substring(s.length() - 4000) : s;
        } catch (IOException e) {
            return "(no log: " + e + ")";
        }
    }

    ProxyClient client(Duration timeout) {
        return new ProxyClient(proxyAddress, timeout);
    }

    /** A registry client of this stack's ZooKeeper, closed at the end. */
    ZkRegistry registry() throws Exception {
        return registry(null);
    }

    /** A registry client of this stack's ZooKeeper authenticated as {@code auth} (none if null), closed at the end. */
    ZkRegistry registry(ZkAuth auth) throws Exception {
        ZkRegistry r = ZkRegistry.connect(zk, "test", Duration.ofSeconds(4), auth);
        closeables.add(r);
        return r;
    }

    /** Until a call to {@code service} through the proxy answers {@code who} with {@code expected}. */
    void waitRoutes(String service, String expected) {
        try (ProxyClient c = client(Duration.ofSeconds(5))) {
            Echo.Client echo = c.client(Echo.Client::new, service);
            waitUntil(() -> {
                try {
                    return echo.echo("who").equals(expected);
                } catch (Exception e) {
                    return false;
                }
            }, Duration.ofSeconds(20), service + " reachable through the proxy");
        }
    }

    @Override
    public void close() throws Exception {
        for (RpcService s : services) {
            if (!s.awaitStopped(Duration.ZERO)) {
                Thread t = new Thread(s::stop);
                t.setDaemon(true);
                t.start();
                t.join(15000);
            }
        }
        for (Process p : procs) {
            p.destroyForcibly();
            p.waitFor(5, TimeUnit.SECONDS);
        }
        for (AutoCloseable c : closeables) {
            c.close();
        }
        zkFactory.shutdown();
        zkServer.shutdown();
        if (System.getenv("RPC_KEEP_TEST_DIRS") == null) {
            deleteTree(dir);
        }
    }

    private static void deleteTree(Path p) throws IOException {
        if (Files.isDirectory(p, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
            try (var s = Files.list(p)) {
                for (Path c : (Iterable<Path>) s::iterator) {
                    deleteTree(c);
                }
            }
        }
        Files.deleteIfExists(p);
    }
}
