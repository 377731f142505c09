package rpcproxy.sdk;

import java.io.IOException;
import java.net.Inet4Address;
import java.net.InetAddress;
import java.net.NetworkInterface;
import java.net.SocketException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Comparator;
import java.util.Enumeration;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.TreeMap;
import java.util.logging.Logger;

/**
 * Reader for {@code config.ini} (SPEC §7), with the same keys, defaults and
 * rules as the Rust reader ({@code rpc-config}) and the Python SDK:
 * {@code key=value} lines, {@code #} starts a comment anywhere on a line,
 * spaces around keys and values are trimmed, an invalid value is an error
 * naming the key, and unknown keys are kept (and logged) rather than
 * rejected. Keys of the project that the Java SDK does not use are checked
 * the same way and kept as text in {@link #other()}.
 */
public final class Config {
    private static final Logger LOG = Logger.getLogger(Config.class.getName());

    /** A config file or value that cannot be used; the message names the key or line. */
    public static final class ConfigException extends IllegalArgumentException {
        private static final long serialVersionUID = 1L;

        public ConfigException(String message) {
            super(message);
        }
    }

    // The original's keys (SPEC §7).
    /** ZooKeeper hosts ({@code h1:2181,h2:2181}); null when unset or a local registry. */
    private String zk;
    /** The {@code zk} value when it names the project's embedded registry ({@code local[:dir]}, the default). */
    private String localRegistry = "local";
    private String product = "test";
    private Duration zkSessionTimeout = Duration.ofSeconds(30);
    /**
     * ZooKeeper identity ({@code zk_auth = digest:user:password}, or the same
     * text in the file {@code zk_auth_file} names, which must be readable by
     * its owner only). With it the registry authenticates, and the nodes it
     * creates only it may change or delete; everyone may read them. Null: no
     * authentication, nodes open to all (the original's behaviour).
     */
    private ZkAuth zkAuth;
    private boolean verbose;
    private String service;
    private String frontHost;
    private Integer frontPort;
    private String frontSock;
    private String ipPrefix;
    private Address backAddress;
    private int workerPoolSize = 1;
    private List<Address> proxyAddress = new ArrayList<>();
    private Duration rpcTimeout = Duration.ofSeconds(15);
    private String falconClient;
    private boolean profile;
    private boolean standAlone;

    // The project's limits and tunables the Java SDK uses.
    private int maxFrameSize = 16_384_000;
    private int maxConnections = 20_000;
    private int maxInflight = 1024;
    private Duration heartbeatInterval = Duration.ofSeconds(1);
    private Duration heartbeatTimeout = Duration.ofSeconds(6);
    private Duration frameTimeout = Duration.ofSeconds(30);
    private Duration quietPeriod = Duration.ofSeconds(5);
    private Duration stopTimeout = Duration.ofSeconds(30);

    private final Map<String, String> other = new TreeMap<>();
    private final Map<String, String> unknown = new TreeMap<>();

    /** Keys of the Rust reader that the Java SDK does not use, and how they are checked. */
    private enum Kind { POSITIVE, UINT, SECONDS, MILLIS_POSITIVE, TEXT, BALANCE, DISPATCH, RATIO, SECONDS_ABOVE_0 }

    private static final Map<String, Kind> OTHER_KEYS = Map.ofEntries(
            Map.entry("worker_prefetch", Kind.UINT),
            Map.entry("backend_max_inflight", Kind.POSITIVE),
            Map.entry("balance", Kind.BALANCE),
            Map.entry("balance_decay_ms", Kind.MILLIS_POSITIVE),
            Map.entry("drain_timeout", Kind.SECONDS),
            Map.entry("dispatch", Kind.DISPATCH),
            Map.entry("queue_size", Kind.POSITIVE),
            Map.entry("register_delay", Kind.SECONDS),
            Map.entry("no_worker_grace", Kind.SECONDS),
            Map.entry("worker_command", Kind.TEXT),
            Map.entry("worker_count", Kind.UINT),
            Map.entry("worker_max_requests", Kind.UINT),
            Map.entry("worker_restart_backoff", Kind.SECONDS),
            Map.entry("metrics_address", Kind.TEXT),
            Map.entry("metrics_max_methods", Kind.POSITIVE),
            Map.entry("falcon_interval", Kind.SECONDS_ABOVE_0),
            Map.entry("threads", Kind.UINT),
            Map.entry("otlp_endpoint", Kind.TEXT),
            Map.entry("trace_sample_ratio", Kind.RATIO),
            Map.entry("otlp_service_name", Kind.TEXT));

    public static Config load(Path path) {
        String text;
        try {
            text = Files.readString(path, StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new ConfigException("cannot read " + path + ": " + e.getMessage());
        }
        return parse(text);
    }

    public static Config load(String path) {
        return load(Path.of(path));
    }

    /** Parses {@code key=value} lines; {@code #} starts a comment; spaces are trimmed. */
    public static Config parse(String text) {
        Config c = new Config();
        String authKey = null;
        String[] lines = text.split("\r?\n", -1);
        for (int i = 0; i < lines.length; i++) {
            String raw = lines[i];
            int hash = raw.indexOf('#');
            String line = (hash >= 0 ? raw.substring(0, hash) : raw).strip();
            if (line.isEmpty()) {
                continue;
            }
            int eq = line.indexOf('=');
            if (eq < 0) {
                throw new ConfigException("line " + (i + 1) + ": expected key=value, got \"" + raw + "\"");
            }
            String k = line.substring(0, eq).strip();
            if (k.equals("zk_auth") || k.equals("zk_auth_file")) {
                // One identity: both keys (or one twice) in a file is a mistake.
                if (authKey != null) {
                    throw invalid(k, "", authKey + " is set already: use one");
                }
                authKey = k;
            }
            c.set(k, line.substring(eq + 1).strip());
        }
        if (c.heartbeatTimeout.compareTo(c.heartbeatInterval) <= 0) {
            throw invalid("heartbeat_timeout_ms", Long.toString(c.heartbeatTimeout.toMillis()),
                    "must exceed heartbeat_interval_ms");
        }
        return c;
    }

    /** Sets one key as if read from the file (tests and tools override keys this way). */
    public Config set(String k, String v) {
        switch (k) {
            case "zk":
                if (v.isEmpty() || v.equals("local") || v.startsWith("local:")) {
                    if (v.equals("local:")) {
                        throw invalid(k, v, "local: needs a directory");
                    }
                    zk = null;
                    localRegistry = v.isEmpty() ? "local" : v;
                } else {
                    for (String host : v.split(",", -1)) {
                        int colon = host.lastIndexOf(':');
                        if (colon < 0) {
                            throw invalid(k, v, "expected host:port[,host:port]");
                        }
                        if (colon == 0 || !isU16(host.substring(colon + 1))) {
                            throw invalid(k, v, "bad ZooKeeper address \"" + host + "\"");
                        }
                    }
                    zk = v;
                    localRegistry = null;
                }
                break;
            case "product":
                if (v.isEmpty() || v.contains("/")) {
                    throw invalid(k, v, "must be a non-empty name without '/'");
                }
                if (v.contains(",")) {
                    // The original registered in each product of a list; a
                    // node named "a,b" would be read by no proxy.
                    throw invalid(k, v, "names one product (a list, which the original Java SDK registered in each,"
                            + " is not supported: run one process per product)");
                }
                product = v;
                break;
            case "zk_session_timeout": zkSessionTimeout = seconds(k, v); break;
            // Errors show the value with its password hidden.
            case "zk_auth":
                try {
                    zkAuth = v.isEmpty() ? null : ZkAuth.parse(v);
                } catch (ZkAuth.ZkAuthException e) {
                    throw invalid(k, ZkAuth.hidePassword(v), e.getMessage());
                }
                break;
            case "zk_auth_file":
                try {
                    zkAuth = v.isEmpty() ? null : ZkAuth.readFile(Path.of(v));
                } catch (ZkAuth.ZkAuthException e) {
                    throw invalid(k, v, e.getMessage());
                }
                break;
            case "verbose": verbose = flag(k, v); break;
            case "service": service = opt(v); break;
            case "front_host": frontHost = opt(v); break;
            case "front_port":
                if (v.isEmpty()) {
                    frontPort = null;
                } else if (!isU16(v)) {
                    throw invalid(k, v, "expected a port number (0 to 65535)");
                } else {
                    frontPort = Integer.parseInt(v);
                }
                break;
            case "front_sock": frontSock = opt(v); break;
            case "ip_prefix": ipPrefix = opt(v); break;
            case "back_address": backAddress = address(k, v); break;
            case "worker_pool_size": workerPoolSize = positive(k, v); break;
            case "proxy_address": {
                List<Address> list = new ArrayList<>();
                for (String a : v.split(",")) {
                    if (!a.isBlank()) {
                        list.add(address(k, a));
                    }
                }
                proxyAddress = list;
                break;
            }
            case "rpc_timeout": rpcTimeout = seconds(k, v); break;
            case "falcon_client": falconClient = opt(v); break;
            case "profile": profile = flag(k, v); break;
            case "stand_alone": standAlone = flag(k, v); break;
            case "max_frame_size": maxFrameSize = positive(k, v); break;
            case "max_connections": maxConnections = positive(k, v); break;
            case "max_inflight": maxInflight = positive(k, v); break;
            case "heartbeat_interval_ms": heartbeatInterval = Duration.ofMillis(uint(k, v)); break;
            case "heartbeat_timeout_ms": heartbeatTimeout = Duration.ofMillis(uint(k, v)); break;
            case "frame_timeout": frameTimeout = seconds(k, v); break;
            case "quiet_period": quietPeriod = seconds(k, v); break;
            case "stop_timeout": stopTimeout = seconds(k, v); break;
            default:
                Kind kind = OTHER_KEYS.get(k);
                if (kind == null) {
                    LOG.warning("unknown configuration key ignored: " + k);
                    unknown.put(k, v);
                } else {
                    check(kind, k, v);
                    other.put(k, v);
                }
        }
        return this;
    }

    private static void check(Kind kind, String k, String v) {
        switch (kind) {
            case POSITIVE: positive(k, v); break;
            case UINT: uint(k, v); break;
            case SECONDS: seconds(k, v); break;
            case MILLIS_POSITIVE: positive(k, v); break;
            case SECONDS_ABOVE_0:
                if (seconds(k, v).isZero()) {
                    throw invalid(k, v, "must be above 0");
                }
                break;
            case BALANCE:
                choice(k, v, "p2c or round_robin", "p2c", "least_outstanding", "least-outstanding",
                        "round_robin", "round-robin", "rr");
                break;
            case DISPATCH:
                choice(k, v, "least_loaded or round_robin", "least_loaded", "least-loaded",
                        "round_robin", "round-robin", "rr");
                break;
            case RATIO: {
                double r;
                try {
                    r = Double.parseDouble(v);
                } catch (NumberFormatException e) {
                    throw invalid(k, v, "invalid float literal");
                }
                if (!(r >= 0.0 && r <= 1.0)) {
                    throw invalid(k, v, "expected a ratio from 0 to 1");
                }
                break;
            }
            case TEXT: break;
        }
    }

    /**
     * The address a service listens on and registers: {@code front_sock}
     * (made absolute), else {@code front_host:front_port}, else this
     * machine's first IPv4 address starting with {@code ip_prefix}, with
     * {@code front_port}.
     */
    public Address frontAddress() {
        if (frontSock != null) {
            return Address.unix(Path.of(frontSock).toAbsolutePath().normalize());
        }
        if (frontPort == null) {
            throw new ConfigException("missing `front_port`");
        }
        String host;
        if (frontHost != null) {
            host = frontHost;
        } else if (ipPrefix != null) {
            host = localIpWithPrefix(ipPrefix).orElseThrow(() ->
                    invalid("ip_prefix", ipPrefix, "no local IPv4 address starts with it"));
        } else {
            throw new ConfigException("missing `front_host`");
        }
        return Address.parse(host.contains(":") ? "[" + host + "]:" + frontPort : host + ":" + frontPort);
    }

    /** This machine's first IPv4 address (in interface order) whose text starts with {@code prefix}. */
    public static Optional<String> localIpWithPrefix(String prefix) {
        List<NetworkInterface> ifaces;
        try {
            Enumeration<NetworkInterface> e = NetworkInterface.getNetworkInterfaces();
            ifaces = e == null ? List.of() : Collections.list(e);
        } catch (SocketException e) {
            return Optional.empty();
        }
        ifaces = new ArrayList<>(ifaces);
        ifaces.sort(Comparator.comparingInt(NetworkInterface::getIndex));
        for (NetworkInterface ni : ifaces) {
            for (InetAddress a : Collections.list(ni.getInetAddresses())) {
                if (a instanceof Inet4Address && a.getHostAddress().startsWith(prefix)) {
                    return Optional.of(a.getHostAddress());
                }
            }
        }
        return Optional.empty();
    }

    // -- value parsers, with the Rust reader's messages ------------------------

    static ConfigException invalid(String key, String value, String reason) {
        return new ConfigException("invalid value for `" + key + "`: \"" + value + "\" (" + reason + ")");
    }

    private static boolean isU16(String s) {
        if (s.isEmpty() || s.length() > 5 || !s.chars().allMatch(ch -> ch >= '0' && ch <= '9')) {
            return false;
        }
        return Integer.parseInt(s) <= 65535;
    }

    private static String opt(String v) {
        return v.isEmpty() ? null : v;
    }

    private static boolean flag(String k, String v) {
        switch (v) {
            case "0": case "false": case "no": case "off": case "": return false;
            case "1": case "true": case "yes": case "on": return true;
            default: throw invalid(k, v, "expected 0 or 1");
        }
    }

    private static long uint(String k, String v) {
        if (v.isEmpty() || !v.chars().allMatch(ch -> ch >= '0' && ch <= '9')) {
            throw invalid(k, v, "invalid digit found in string");
        }
        try {
            return Long.parseLong(v);
        } catch (NumberFormatException e) {
            throw invalid(k, v, "number too large to fit in target type");
        }
    }

    private static int positive(String k, String v) {
        long n = uint(k, v);
        if (n == 0) {
            throw invalid(k, v, "must be at least 1");
        }
        return (int) Math.min(n, Integer.MAX_VALUE);
    }

    private static Duration seconds(String k, String v) {
        double s;
        try {
            s = Double.parseDouble(v);
        } catch (NumberFormatException e) {
            throw invalid(k, v, "invalid float literal");
        }
        if (!(s >= 0.0 && s <= 1e9)) {
            throw invalid(k, v, "expected seconds >= 0");
        }
        return Duration.ofNanos(Math.round(s * 1e9));
    }

    private static Address address(String k, String v) {
        if (v.isBlank()) {
            return null;
        }
        try {
            return Address.parse(v);
        } catch (IllegalArgumentException e) {
            throw invalid(k, v, e.getMessage());
        }
    }

    private static void choice(String k, String v, String expected, String... allowed) {
        for (String a : allowed) {
            if (a.equals(v)) {
                return;
            }
        }
        throw invalid(k, v, "expected " + expected);
    }

    // -- accessors ----------------------------------------------------------------

    /** The ZooKeeper hosts, if {@code zk} names ZooKeeper. */
    public Optional<String> zk() { return Optional.ofNullable(zk); }
    /** The {@code zk} value when it selects the project's embedded (local) registry. */
    public Optional<String> localRegistry() { return Optional.ofNullable(localRegistry); }
    public String product() { return product; }
    public Duration zkSessionTimeout() { return zkSessionTimeout; }
    /** The ZooKeeper identity ({@code zk_auth} or {@code zk_auth_file}); shown as {@code digest:user}. */
    public Optional<ZkAuth> zkAuth() { return Optional.ofNullable(zkAuth); }
    public boolean verbose() { return verbose; }
    public Optional<String> service() { return Optional.ofNullable(service); }
    public Optional<String> frontHost() { return Optional.ofNullable(frontHost); }
    public Optional<Integer> frontPort() { return Optional.ofNullable(frontPort); }
    public Optional<String> frontSock() { return Optional.ofNullable(frontSock); }
    public Optional<String> ipPrefix() { return Optional.ofNullable(ipPrefix); }
    public Optional<Address> backAddress() { return Optional.ofNullable(backAddress); }
    public int workerPoolSize() { return workerPoolSize; }
    public List<Address> proxyAddress() { return Collections.unmodifiableList(proxyAddress); }
    public Duration rpcTimeout() { return rpcTimeout; }
    public Optional<String> falconClient() { return Optional.ofNullable(falconClient); }
    public boolean profile() { return profile; }
    public boolean standAlone() { return standAlone; }
    public int maxFrameSize() { return maxFrameSize; }
    public int maxConnections() { return maxConnections; }
    public int maxInflight() { return maxInflight; }
    public Duration heartbeatInterval() { return heartbeatInterval; }
    public Duration heartbeatTimeout() { return heartbeatTimeout; }
    public Duration frameTimeout() { return frameTimeout; }
    public Duration quietPeriod() { return quietPeriod; }
    public Duration stopTimeout() { return stopTimeout; }
    /** Keys of the project the Java SDK does not use, as written (validated). */
    public Map<String, String> other() { return Collections.unmodifiableMap(other); }
    /** Keys no component knows (kept, and warned about at load). */
    public Map<String, String> unknown() { return Collections.unmodifiableMap(unknown); }
}
