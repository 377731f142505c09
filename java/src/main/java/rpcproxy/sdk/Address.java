package rpcproxy.sdk;

import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.net.UnixDomainSocketAddress;
import java.nio.file.Path;
import java.util.Objects;

/**
 * An address in configuration (SPEC §1): text containing {@code :} is TCP
 * ({@code host:port}, {@code [v6]:port} accepted), anything else is a Unix
 * domain socket path.
 */
public final class Address {
    private final String text;

    private Address(String text) {
        this.text = text;
    }

    public static Address parse(String text) {
        String t = text.trim();
        if (t.isEmpty()) {
            throw new IllegalArgumentException("empty address");
        }
        Address a = new Address(t);
        if (a.isTcp()) {
            a.port(); // validates
        }
        return a;
    }

    public static Address unix(Path path) {
        return new Address(path.toString());
    }

    public boolean isTcp() {
        return text.indexOf(':') >= 0;
    }

    public boolean isUnix() {
        return !isTcp();
    }

    public String host() {
        requireTcp();
        String h = text.substring(0, text.lastIndexOf(':'));
        if (h.startsWith("[") && h.endsWith("]")) {
            h = h.substring(1, h.length() - 1);
        }
        return h;
    }

    public int port() {
        requireTcp();
        String p = text.substring(text.lastIndexOf(':') + 1);
        try {
            int n = Integer.parseInt(p);
            if (n < 0 || n > 65535) {
                throw new NumberFormatException();
            }
            return n;
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("bad port in address " + text);
        }
    }

    public Path path() {
        if (isTcp()) {
            throw new IllegalArgumentException(text + " is host:port, not a Unix socket path");
        }
        return Path.of(text);
    }

    /** What to bind or connect to (TCP names are resolved here). */
    public SocketAddress socketAddress() {
        return isTcp() ? new InetSocketAddress(host(), port()) : UnixDomainSocketAddress.of(text);
    }

    private void requireTcp() {
        if (!isTcp()) {
            throw new IllegalArgumentException(text + " is a Unix socket path, not host:port");
        }
    }

    @Override
    public String toString() {
        return text;
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof Address && ((Address) o).text.equals(text);
    }

    @Override
    public int hashCode() {
        return Objects.hashCode(text);
    }
}
