package rpcproxy.sdk;

import java.io.IOException;
import java.net.InetAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.LocalDateTime;
import java.time.format.DateTimeFormatter;

/**
 * An endpoint record as stored in the registry (SPEC §6), written with the
 * same fields, in the same order, as the Rust registry writes them.
 */
public final class Endpoint {
    private static final DateTimeFormatter START_TIME = DateTimeFormatter.ofPattern("yyyy-MM-dd HH:mm:ss");

    public final String service;
    public final String serviceId;
    public final String frontend;
    public final String deployPath;
    public final String codeUrlVersion;
    public final String hostname;
    public final String startTime;

    public Endpoint(String service, String frontend, String deployPath, String codeUrlVersion,
                    String hostname, String startTime) {
        this.service = service;
        this.serviceId = serviceId(frontend);
        this.frontend = frontend;
        this.deployPath = deployPath;
        this.codeUrlVersion = codeUrlVersion;
        this.hostname = hostname;
        this.startTime = startTime;
    }

    /** A record for {@code frontend}, with hostname, start time and working directory of this process. */
    public static Endpoint of(String service, String frontend, String codeUrlVersion) {
        return new Endpoint(service, frontend, Path.of("").toAbsolutePath().toString(),
                codeUrlVersion == null ? "" : codeUrlVersion, hostname(),
                LocalDateTime.now().format(START_TIME));
    }

    /**
     * {@code service_id} from a frontend address: {@code .} and {@code :}
     * become {@code _}, {@code /} is dropped, and only the last 20
     * characters are kept.
     */
    public static String serviceId(String frontend) {
        StringBuilder b = new StringBuilder(frontend.length());
        frontend.codePoints().forEach(c -> {
            if (c == '/') {
                return;
            }
            b.appendCodePoint(c == '.' || c == ':' ? '_' : c);
        });
        int n = b.codePointCount(0, b.length());
        return n <= 20 ? b.toString() : b.substring(b.offsetByCodePoints(0, n - 20));
    }

    /** The registry node of this endpoint: {@code /zk/product/{product}/services/{service}/{service_id}}. */
    public String path(String product) {
        return "/zk/product/" + product + "/services/" + service + "/" + serviceId;
    }

    public String toJson() {
        StringBuilder b = new StringBuilder(256).append('{');
        field(b, "service", service).append(',');
        field(b, "service_id", serviceId).append(',');
        field(b, "frontend", frontend).append(',');
        field(b, "deploy_path", deployPath).append(',');
        field(b, "code_url_version", codeUrlVersion).append(',');
        field(b, "hostname", hostname).append(',');
        field(b, "start_time", startTime);
        return b.append('}').toString();
    }

    public byte[] toJsonBytes() {
        return toJson().getBytes(StandardCharsets.UTF_8);
    }

    private static StringBuilder field(StringBuilder b, String name, String value) {
        quote(b, name).append(':');
        return quote(b, value);
    }

    static StringBuilder quote(StringBuilder b, String s) {
        b.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                case '\b': b.append("\\b"); break;
                case '\f': b.append("\\f"); break;
                default:
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
            }
        }
        return b.append('"');
    }

    /** The kernel's host name (what gethostname(2) answers), without a DNS lookup. */
    static String hostname() {
        try {
            String h = Files.readString(Path.of("/proc/sys/kernel/hostname"), StandardCharsets.UTF_8).strip();
            if (!h.isEmpty()) {
                return h;
            }
        } catch (IOException | RuntimeException e) {
            // not Linux: fall through
        }
        try {
            return InetAddress.getLocalHost().getHostName();
        } catch (IOException e) {
            return "";
        }
    }

    @Override
    public String toString() {
        return toJson();
    }
}
