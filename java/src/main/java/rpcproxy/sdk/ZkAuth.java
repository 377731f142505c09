package rpcproxy.sdk;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.AccessDeniedException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFileAttributes;
import java.nio.file.attribute.PosixFilePermission;

/**
 * ZooKeeper credentials ({@code zk_auth}, {@code zk_auth_file}): the
 * identity a registry authenticates as, and that owns the nodes it creates
 * (see {@link ZkRegistry} for the ACLs they get). The same rules and
 * messages as the Rust reader ({@code rpc_config::ZkAuth}).
 *
 * <p>Only ZooKeeper's {@code digest} scheme is accepted:
 * {@code digest:user:password}. The password never leaves this object
 * except as the bytes sent to ZooKeeper ({@link #credentials()}):
 * {@link #toString()} shows {@code digest:user} only, and errors never
 * echo it.
 */
public final class ZkAuth {
    /** The only scheme accepted. */
    public static final String SCHEME = "digest";

    /** {@code user:password}, as the digest scheme wants it on the wire. */
    private final String credentials;
    private final String user;

    private ZkAuth(String credentials, String user) {
        this.credentials = credentials;
        this.user = user;
    }

    /** A value that cannot be used; the message never holds the password. */
    public static final class ZkAuthException extends IllegalArgumentException {
        private static final long serialVersionUID = 1L;

        ZkAuthException(String message) {
            super(message);
        }
    }

    /** Parses {@code digest:user:password} (surrounding white space ignored). */
    public static ZkAuth parse(String text) {
        text = text.strip();
        int colon = text.indexOf(':');
        if (colon < 0) {
            throw new ZkAuthException("expected digest:user:password");
        }
        String scheme = text.substring(0, colon);
        String rest = text.substring(colon + 1);
        if (!scheme.equals(SCHEME)) {
            throw new ZkAuthException("scheme " + quoted(scheme) + " is not supported; expected digest:user:password");
        }
        int second = rest.indexOf(':');
        if (second < 0) {
            throw new ZkAuthException("expected digest:user:password (no password)");
        }
        String user = rest.substring(0, second);
        String password = rest.substring(second + 1);
        if (user.isEmpty() || user.codePoints().anyMatch(c -> isWhitespace(c) || Character.isISOControl(c))) {
            throw new ZkAuthException("the user must be non-empty, without spaces");
        }
        if (password.isEmpty()) {
            throw new ZkAuthException("the password is empty");
        }
        if (password.codePoints().anyMatch(Character::isISOControl)) {
            throw new ZkAuthException("the password holds control characters (a second line?)");
        }
        return new ZkAuth(rest, user);
    }

    /**
     * Reads {@code digest:user:password} from {@code path} (surrounding white
     * space, such as the final newline, ignored). Refuses a file that its
     * group or others may read, write or execute ({@code chmod 600} it), and
     * anything but a regular file.
     */
    public static ZkAuth readFile(Path path) {
        PosixFileAttributes attrs;
        try {
            attrs = Files.readAttributes(path, PosixFileAttributes.class);
        } catch (IOException | UnsupportedOperationException e) {
            throw new ZkAuthException("cannot read it: " + ioReason(e));
        }
        if (!attrs.isRegularFile()) {
            throw new ZkAuthException("not a regular file");
        }
        int mode = mode(attrs);
        if ((mode & 0077) != 0) {
            throw new ZkAuthException(String.format(
                    "its mode is %04o: it must be readable by its owner only (chmod 600)", mode));
        }
        String text;
        try {
            text = Files.readString(path, StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new ZkAuthException("cannot read it: " + ioReason(e));
        }
        return parse(text);
    }

    /** The user part of the identity. */
    public String user() {
        return user;
    }

    /** What ZooKeeper's digest scheme takes: {@code user:password}. For the client library only; never log it. */
    public byte[] credentials() {
        return credentials.getBytes(StandardCharsets.UTF_8);
    }

    /** {@code digest:user}, never the password. */
    @Override
    public String toString() {
        return SCHEME + ":" + user;
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof ZkAuth && ((ZkAuth) o).credentials.equals(credentials);
    }

    @Override
    public int hashCode() {
        return credentials.hashCode();
    }

    /** A {@code zk_auth} value fit for an error message: {@code scheme:user:…}, or {@code …}. */
    static String hidePassword(String value) {
        String[] parts = value.split(":", 3);
        return parts.length == 3 ? parts[0] + ":" + parts[1] + ":\u2026" : "\u2026";
    }

    /** Rust's {@code char::is_whitespace} (Unicode White_Space). */
    private static boolean isWhitespace(int c) {
        return Character.isWhitespace(c) || Character.isSpaceChar(c) || c == 0x85;
    }

    private static int mode(PosixFileAttributes attrs) {
        int mode = 0;
        for (PosixFilePermission p : attrs.permissions()) {
            switch (p) {
                case OWNER_READ: mode |= 0400; break;
                case OWNER_WRITE: mode |= 0200; break;
                case OWNER_EXECUTE: mode |= 0100; break;
                case GROUP_READ: mode |= 040; break;
                case GROUP_WRITE: mode |= 020; break;
                case GROUP_EXECUTE: mode |= 010; break;
                case OTHERS_READ: mode |= 04; break;
                case OTHERS_WRITE: mode |= 02; break;
                case OTHERS_EXECUTE: mode |= 01; break;
            }
        }
        return mode;
    }

    private static String ioReason(Exception e) {
        if (e instanceof NoSuchFileException) {
            return "No such file or directory";
        }
        if (e instanceof AccessDeniedException) {
            return "Permission denied";
        }
        if (e instanceof UnsupportedOperationException) {
            return "no POSIX permissions on this file system";
        }
        String m = e.getMessage();
        return m == null ? e.getClass().getSimpleName() : m;
    }

    /** Like Rust's {@code {:?}} of a string: quoted, with quotes, backslashes and control characters escaped. */
    private static String quoted(String s) {
        StringBuilder b = new StringBuilder("\"");
        s.codePoints().forEach(c -> {
            if (c == '"' || c == '\\') {
                b.append('\\').appendCodePoint(c);
            } else if (c == '\n') {
                b.append("\\n");
            } else if (c == '\r') {
                b.append("\\r");
            } else if (c == '\t') {
                b.append("\\t");
            } else if (Character.isISOControl(c)) {
                b.append(String.format("\\u{%x}", c));
            } else {
                b.appendCodePoint(c);
            }
        });
        return b.append('"').toString();
    }
}
