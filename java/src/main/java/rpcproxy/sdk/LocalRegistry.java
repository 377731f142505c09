package rpcproxy.sdk;

import java.io.Closeable;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.security.SecureRandom;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.logging.Logger;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Endpoint registration in the project's embedded single-machine registry
 * ({@code zk} unset, {@code zk=local} or {@code zk=local:DIR}), written
 * exactly as the Rust registry ({@code rpc_registry::local}) writes it, so
 * that an {@code rpc-proxy} on the same directory routes to the service:
 *
 * <ul>
 * <li>one file per endpoint, {@code {dir}/{product}/services/{service}/{service_id}.json},
 * holding the SPEC §6 record plus {@code "product"} and its owner:
 * {@code "pid"}, {@code "pid_start"} (field 22 of {@code /proc/{pid}/stat},
 * so a recycled pid is not taken for the owner) and {@code "token"} (a
 * random u64 telling registrations of one process apart);
 * <li>written atomically: a temporary {@code .{name}.{pid}.tmp} in the same
 * directory, then renamed over the entry;
 * <li>every second each registration checks its file: written again if it
 * is gone (or unreadable), no longer kept if another owner replaced it;
 * <li>deregistering removes the file only if it is still this registration's.
 * </ul>
 *
 * Watchers (the proxies) remove the files of owners that died, so a killed
 * service disappears like an expired ZooKeeper session. The product's
 * directory and its {@code services} directory must not be symbolic links
 * (they would show another product's entries as this one's): opening such
 * a registry fails, as the Rust one does.
 */
public final class LocalRegistry implements Closeable {
    private static final Logger LOG = Logger.getLogger(LocalRegistry.class.getName());
    /** How often a registration checks that its file is still there (the Rust registrant's period). */
    public static final Duration CHECK = Duration.ofSeconds(1);
    private static final SecureRandom RANDOM = new SecureRandom();

    private final Path root;
    private final Path base;
    private final String product;
    private final List<Registration> registrations = new CopyOnWriteArrayList<>();
    private final Object wake = new Object();
    private final Thread keeper;
    private volatile boolean closed;

    /**
     * The directory {@code zk=local} (or no {@code zk}) means, as the Rust
     * config reads it: {@code $RPC_REGISTRY_DIR}, else
     * {@code rpc_proxy-registry} in the temporary directory
     * ({@code $TMPDIR}, else {@code /tmp}).
     */
    public static Path defaultDir() {
        String dir = System.getenv("RPC_REGISTRY_DIR");
        if (dir != null) {
            return Path.of(dir);
        }
        String tmp = System.getenv("TMPDIR");
        return Path.of(tmp != null ? tmp : "/tmp").resolve("rpc_proxy-registry");
    }

    /** The directory a {@code zk} value naming the embedded registry ({@code local} or {@code local:DIR}) means. */
    public static Path dirOf(String spec) {
        if (spec == null || spec.isEmpty() || spec.equals("local")) {
            return defaultDir();
        }
        if (spec.startsWith("local:") && spec.length() > "local:".length()) {
            return Path.of(spec.substring("local:".length()));
        }
        throw new IllegalArgumentException("not an embedded registry: zk=" + spec);
    }

    /** The registry a configuration names ({@code zk} unset, {@code local} or {@code local:DIR}; {@code product}). */
    public static LocalRegistry open(Config config) throws ZkRegistry.RegistryException {
        String spec = config.localRegistry().orElseThrow(() -> new ZkRegistry.RegistryException(
                "zk=" + config.zk().orElse("") + " names ZooKeeper, not the embedded registry"));
        return open(dirOf(spec), config.product());
    }

    /**
     * A registry rooted at {@code dir} (created if missing) for {@code product}.
     * Fails if {@code {dir}/{product}} or its {@code services} directory is a symbolic link.
     */
    public static LocalRegistry open(Path dir, String product) throws ZkRegistry.RegistryException {
        return new LocalRegistry(dir, product);
    }

    private LocalRegistry(Path dir, String product) throws ZkRegistry.RegistryException {
        this.root = dir;
        this.product = product;
        this.base = dir.resolve(product).resolve("services");
        try {
            Files.createDirectories(base);
        } catch (IOException e) {
            throw new ZkRegistry.RegistryException("local registry " + base + ": " + e);
        }
        for (Path p : new Path[] {base.getParent(), base}) {
            if (Files.isSymbolicLink(p)) {
                throw new ZkRegistry.RegistryException("local registry " + p
                        + ": is a symbolic link; a product's entries must be its own");
            }
        }
        keeper = new Thread(this::keep, "rpc-local-registry");
        keeper.setDaemon(true);
        keeper.start();
        LOG.info("local registry " + root + ", product " + product);
    }

    /** The registry's directory ({@code DIR} of {@code zk=local:DIR}). */
    public Path dir() {
        return root;
    }

    /** {@code {dir}/{product}/services}. */
    public Path base() {
        return base;
    }

    public String product() {
        return product;
    }

    /** The file of {@code endpoint}: {@code {dir}/{product}/services/{service}/{service_id}.json}. */
    public Path file(Endpoint endpoint) {
        return base.resolve(endpoint.service).resolve(endpoint.serviceId + ".json");
    }

    /** Writes the file of {@code endpoint} (replacing whatever is there) and keeps it until deregistered. */
    public Registration register(Endpoint endpoint) throws ZkRegistry.RegistryException {
        if (closed) {
            throw new ZkRegistry.RegistryException("local registry " + root + " is closed");
        }
        Owner owner = Owner.thisProcess();
        Registration r = new Registration(file(endpoint), record(endpoint, product, owner), owner);
        try {
            writeAtomically(r.path, r.data);
        } catch (IOException e) {
            throw new ZkRegistry.RegistryException("register " + r.path + ": " + e);
        }
        registrations.add(r);
        LOG.info("registered " + r.path);
        return r;
    }

    /** Checks every registration once a second (the Rust registrant's loop). */
    private void keep() {
        while (!closed) {
            synchronized (wake) {
                try {
                    wake.wait(CHECK.toMillis());
                } catch (InterruptedException e) {
                    return;
                }
            }
            for (Registration r : registrations) {
                if (!closed) {
                    r.check();
                }
            }
        }
    }

    /** Stops checking and removes the files of the registrations still held (if still theirs). */
    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        for (Registration r : registrations) {
            r.deregister();
        }
        synchronized (wake) {
            wake.notifyAll();
        }
        keeper.interrupt();
        try {
            keeper.join(2000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** A live registration; {@link #deregister()} removes its file if it is still its own. */
    public final class Registration {
        final Path path;
        final byte[] data;
        final Owner owner;
        /** Deregistered, or another owner took the entry: no longer kept. */
        private boolean stopped;

        Registration(Path path, byte[] data, Owner owner) {
            this.path = path;
            this.data = data;
            this.owner = owner;
        }

        /** The endpoint's file. */
        public Path path() {
            return path;
        }

        /** Writes the file again if it is gone; stops keeping it if another owner replaced it. */
        synchronized void check() {
            if (stopped) {
                return;
            }
            try {
                Owner found = readOwner(path);
                if (found == null) {
                    writeAtomically(path, data);
                    LOG.info("re-registered " + path);
                } else if (!found.equals(owner)) {
                    stopped = true;
                    registrations.remove(this);
                    LOG.warning(path + " was taken by another registrant (pid " + found.pid + "): no longer kept");
                }
            } catch (IOException e) {
                LOG.warning("re-register " + path + " failed: " + e);
            }
        }

        public synchronized void deregister() {
            if (stopped) {
                registrations.remove(this);
                return;
            }
            stopped = true;
            registrations.remove(this);
            try {
                if (owner.equals(readOwner(path))) {
                    Files.deleteIfExists(path);
                    LOG.info("deregistered " + path);
                }
            } catch (IOException e) {
                LOG.warning("deregister " + path + " failed: " + e);
            }
        }
    }

    // -- the record and its owner -------------------------------------------------

    /** The owner of an entry: process, its start time, and the registration's token. */
    static final class Owner {
        final long pid;
        /** Start of the process in clock ticks since boot (field 22 of /proc/{pid}/stat); 0 where unknown. */
        final long pidStart;
        /** A random u64 (compared and written unsigned). */
        final long token;

        Owner(long pid, long pidStart, long token) {
            this.pid = pid;
            this.pidStart = pidStart;
            this.token = token;
        }

        static Owner thisProcess() {
            long pid = ProcessHandle.current().pid();
            return new Owner(pid, processStart(pid), RANDOM.nextLong());
        }

        @Override
        public boolean equals(Object o) {
            return o instanceof Owner && ((Owner) o).pid == pid && ((Owner) o).pidStart == pidStart
                    && ((Owner) o).token == token;
        }

        @Override
        public int hashCode() {
            return Long.hashCode(pid * 31 + pidStart) * 31 + Long.hashCode(token);
        }
    }

    /**
     * Field 22 (start time) of {@code /proc/{pid}/stat}, counted after the
     * closing ')' of the command name (which may hold spaces); 0 if unknown.
     */
    static long processStart(long pid) {
        try {
            String stat = Files.readString(Path.of("/proc/" + pid + "/stat"), StandardCharsets.UTF_8);
            int close = stat.lastIndexOf(')');
            if (close < 0 || close + 2 > stat.length()) {
                return 0;
            }
            String[] rest = stat.substring(close + 2).trim().split("\\s+");
            return rest.length > 19 ? Long.parseUnsignedLong(rest[19]) : 0;
        } catch (IOException | RuntimeException e) {
            return 0;
        }
    }

    /** The Rust registry's file content: the SPEC §6 fields, product, pid, pid_start, token (pretty-printed). */
    static byte[] record(Endpoint ep, String product, Owner owner) {
        StringBuilder b = new StringBuilder(384).append("{\n");
        String[][] fields = {
                {"service", ep.service}, {"service_id", ep.serviceId}, {"frontend", ep.frontend},
                {"deploy_path", ep.deployPath}, {"code_url_version", ep.codeUrlVersion},
                {"hostname", ep.hostname}, {"start_time", ep.startTime}, {"product", product}};
        for (String[] f : fields) {
            b.append("  ");
            Endpoint.quote(b, f[0]).append(": ");
            Endpoint.quote(b, f[1]).append(",\n");
        }
        b.append("  \"pid\": ").append(owner.pid).append(",\n");
        b.append("  \"pid_start\": ").append(Long.toUnsignedString(owner.pidStart)).append(",\n");
        b.append("  \"token\": ").append(Long.toUnsignedString(owner.token)).append("\n}");
        return b.toString().getBytes(StandardCharsets.UTF_8);
    }

    private static final Pattern PID = Pattern.compile("\"pid\"\\s*:\\s*(\\d+)");
    private static final Pattern PID_START = Pattern.compile("\"pid_start\"\\s*:\\s*(\\d+)");
    private static final Pattern TOKEN = Pattern.compile("\"token\"\\s*:\\s*(\\d+)");
    private static final Pattern SERVICE_ID = Pattern.compile("\"service_id\"\\s*:\\s*\"");

    /**
     * The owner written in the file at {@code path}; null if there is no
     * file or it is not a record with an owner (the Rust registrant writes
     * such a file again too).
     */
    static Owner readOwner(Path path) throws IOException {
        String text;
        try {
            text = Files.readString(path, StandardCharsets.UTF_8);
        } catch (NoSuchFileException e) {
            return null;
        } catch (java.nio.charset.MalformedInputException e) {
            return null;
        }
        Matcher pid = PID.matcher(text);
        if (!pid.find() || !SERVICE_ID.matcher(text).find()) {
            return null;
        }
        try {
            return new Owner(Long.parseLong(pid.group(1)), unsigned(PID_START, text), unsigned(TOKEN, text));
        } catch (NumberFormatException e) {
            return null;
        }
    }

    private static long unsigned(Pattern p, String text) {
        Matcher m = p.matcher(text);
        return m.find() ? Long.parseUnsignedLong(m.group(1)) : 0;
    }

    /** A temporary {@code .{name}.{pid}.tmp} beside {@code path}, then renamed over it. */
    static void writeAtomically(Path path, byte[] data) throws IOException {
        Path dir = path.getParent();
        Files.createDirectories(dir);
        Path tmp = dir.resolve("." + path.getFileName() + "." + ProcessHandle.current().pid() + ".tmp");
        Files.write(tmp, data);
        try {
            Files.move(tmp, path, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
        } catch (AtomicMoveNotSupportedException e) {
            Files.move(tmp, path, StandardCopyOption.REPLACE_EXISTING);
        } catch (IOException e) {
            Files.deleteIfExists(tmp);
            throw e;
        }
    }
}
