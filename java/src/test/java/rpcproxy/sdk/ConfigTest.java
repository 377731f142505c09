package rpcproxy.sdk;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.util.List;

import org.junit.Test;

public class ConfigTest {
    @Test
    public void readsTheOriginalsKeys() {
        Config c = Config.parse("# comment\n zk = 127.0.0.1:2181,127.0.0.2:2181 \nproduct=online_x\nservice=echo # trailing\n"
                + "front_host=127.0.0.1\nfront_port=5555\nback_address=/tmp/lb.sock\nworker_pool_size=4\n"
                + "proxy_address=127.0.0.1:5550\nrpc_timeout=2.5\nverbose=1\nzk_session_timeout=10\n"
                + "falcon_client=http://x/push\nprofile=0\nstand_alone=0\nip_prefix=\nfront_sock=\n");
        assertEquals("127.0.0.1:2181,127.0.0.2:2181", c.zk().get());
        assertEquals("online_x", c.product());
        assertEquals("echo", c.service().get());
        assertEquals(Address.parse("127.0.0.1:5555"), c.frontAddress());
        assertEquals("/tmp/lb.sock", c.backAddress().get().toString());
        assertEquals(4, c.workerPoolSize());
        assertEquals(List.of(Address.parse("127.0.0.1:5550")), c.proxyAddress());
        assertEquals(Duration.ofMillis(2500), c.rpcTimeout());
        assertTrue(c.verbose());
        assertEquals(Duration.ofSeconds(10), c.zkSessionTimeout());
        assertEquals("http://x/push", c.falconClient().get());
        assertFalse(c.standAlone());
        assertFalse(c.ipPrefix().isPresent());
        assertFalse(c.frontSock().isPresent());
        assertTrue(c.unknown().isEmpty());
    }

    @Test
    public void defaultsMatchTheRustReader() {
        Config c = Config.parse("");
        assertEquals("test", c.product());
        assertEquals(Duration.ofSeconds(30), c.zkSessionTimeout());
        assertEquals(Duration.ofSeconds(15), c.rpcTimeout());
        assertEquals(1, c.workerPoolSize());
        assertEquals(16_384_000, c.maxFrameSize());
        assertEquals(1024, c.maxInflight());
        assertEquals(20_000, c.maxConnections());
        assertEquals(Duration.ofSeconds(5), c.quietPeriod());
        assertEquals(Duration.ofSeconds(30), c.stopTimeout());
        assertEquals(Duration.ofSeconds(30), c.frameTimeout());
        assertFalse(c.zk().isPresent());
        assertEquals("local", c.localRegistry().get());
    }

    @Test
    public void invalidValuesNameTheKeyAndUnknownKeysAreKept() {
        for (String bad : new String[] {"front_port=70000", "rpc_timeout=-1", "verbose=maybe", "max_inflight=0",
                "zk=nohostport", "product=a/b", "product=online_a,online_b", "balance=random", "worker_pool_size=x"}) {
            String key = bad.substring(0, bad.indexOf('='));
            try {
                Config.parse(bad);
                fail("accepted " + bad);
            } catch (Config.ConfigException e) {
                assertTrue(e.getMessage(), e.getMessage().contains("`" + key + "`"));
            }
        }
        try {
            Config.parse("just words");
            fail("accepted a line without =");
        } catch (Config.ConfigException e) {
            assertTrue(e.getMessage(), e.getMessage().startsWith("line 1:"));
        }
        try {
            Config.parse("heartbeat_interval_ms=1000\nheartbeat_timeout_ms=1000");
            fail("accepted a heartbeat timeout not above the interval");
        } catch (Config.ConfigException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("heartbeat_timeout_ms"));
        }
        Config c = Config.parse("some_future_key = 3\nbalance = rr\nworker_command = python3 -m w");
        assertEquals("3", c.unknown().get("some_future_key"));
        assertEquals("rr", c.other().get("balance"));
        assertEquals("python3 -m w", c.other().get("worker_command"));
    }

    @Test
    public void frontAddressFromSocketOrPrefix() {
        Config sock = Config.parse("front_sock = run/echo.sock\nfront_host=127.0.0.1\nfront_port=1");
        Address a = sock.frontAddress();
        assertTrue(a.isUnix());
        assertEquals(Path.of("run/echo.sock").toAbsolutePath(), a.path());

        Config prefix = Config.parse("ip_prefix = 127.\nfront_port=7000");
        assertEquals("127.0.0.1:7000", prefix.frontAddress().toString());

        try {
            Config.parse("ip_prefix = 254.254.\nfront_port=7000").frontAddress();
            fail("found an address for an impossible prefix");
        } catch (Config.ConfigException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("`ip_prefix`"));
        }
        try {
            Config.parse("front_host=127.0.0.1").frontAddress();
            fail("no port but an address");
        } catch (Config.ConfigException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("front_port"));
        }
    }

    /** An error for {@code text}, which must name {@code key} and never show the password. */
    private static String refused(String text, String key) {
        try {
            Config.parse(text);
        } catch (Config.ConfigException e) {
            String m = e.getMessage();
            assertTrue(text + ": " + m, m.contains("`" + key + "`"));
            assertFalse(text + ": " + m, m.contains("pw-secret"));
            return m;
        }
        throw new AssertionError("accepted " + text);
    }

    @Test
    public void zkAuthIsADigestIdentityWhosePasswordNoErrorShows() {
        assertFalse(Config.parse("").zkAuth().isPresent());
        assertFalse(Config.parse("zk_auth=").zkAuth().isPresent());
        ZkAuth a = Config.parse("zk_auth = digest:echo:pw-secret\n").zkAuth().get();
        assertEquals("echo", a.user());
        assertEquals("echo:pw-secret", new String(a.credentials(), StandardCharsets.UTF_8));
        assertEquals("digest:echo", a.toString());
        // The password may hold ':' (split at the first one after the user).
        ZkAuth colon = Config.parse("zk_auth = digest:svc-echo:s3cr:et").zkAuth().get();
        assertEquals("svc-echo", colon.user());
        assertEquals("svc-echo:s3cr:et", new String(colon.credentials(), StandardCharsets.UTF_8));

        for (String bad : new String[] {"digest", "digest:echo", "digest::pw-secret", "echo:pw-secret",
                "digest:us er:pw-secret", "digest:echo:", "sasl:echo:pw-secret", "ip:10.0.0.1", "world:anyone",
                "digest:echo:pw-secret\u0001"}) {
            refused("zk_auth = " + bad, "zk_auth");
        }
        String m = refused("zk_auth = sasl:echo:pw-secret", "zk_auth");
        assertTrue(m, m.contains("scheme \"sasl\" is not supported"));
        assertTrue(m, m.contains("\"sasl:echo:\u2026\""));
        assertTrue(refused("zk_auth = digest:echo:", "zk_auth").contains("the password is empty"));
        assertTrue(refused("zk_auth = digest:a b:pw-secret", "zk_auth").contains("without spaces"));
        try {
            ZkAuth.parse("digest:echo:pw-secret\nmore");
            fail("accepted a second line");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("control characters"));
            assertFalse(e.getMessage(), e.getMessage().contains("pw-secret"));
        }
    }

    @Test
    public void zkAuthFileMustBeTheOwnersAloneAndOneKeyIsSet() throws Exception {
        Path dir = Files.createTempDirectory("rpc-java-zkauth");
        try {
            Path file = dir.resolve("zk.auth");
            Files.writeString(file, "  digest:echo:pw-secret\n", StandardCharsets.UTF_8);
            String key = "zk_auth_file = " + file;
            for (String mode : new String[] {"rw-r--r--", "rw-r-----", "rw----r--", "rw--w----", "rw-----w-",
                    "rwx--x---"}) {
                Files.setPosixFilePermissions(file, PosixFilePermissions.fromString(mode));
                String m = refused(key, "zk_auth_file");
                assertTrue(mode + ": " + m, m.contains("chmod 600"));
            }
            Files.setPosixFilePermissions(file, PosixFilePermissions.fromString("rw-r--r--"));
            assertTrue(refused(key, "zk_auth_file").contains("its mode is 0644"));
            for (String mode : new String[] {"rw-------", "r--------"}) {
                Files.setPosixFilePermissions(file, PosixFilePermissions.fromString(mode));
                ZkAuth a = Config.parse(key).zkAuth().get();
                assertEquals("echo:pw-secret", new String(a.credentials(), StandardCharsets.UTF_8));
                assertEquals("digest:echo", a.toString());
            }
            assertTrue(refused("zk_auth_file = " + dir.resolve("missing"), "zk_auth_file").contains("cannot read it"));
            assertTrue(refused("zk_auth_file = " + dir, "zk_auth_file").contains("not a regular file"));
            assertFalse(Config.parse("zk_auth_file =").zkAuth().isPresent());

            // A bad identity in a good file: named by the file's key, password hidden.
            Path bad = dir.resolve("bad.auth");
            Files.writeString(bad, "sasl:echo:pw-secret\n", StandardCharsets.UTF_8);
            Files.setPosixFilePermissions(bad, PosixFilePermissions.fromString("rw-------"));
            refused("zk_auth_file = " + bad, "zk_auth_file");

            // One identity per file, as the Rust reader: both keys (in either order), or one twice, is refused.
            assertTrue(refused("zk_auth = digest:echo:pw-secret\n" + key, "zk_auth_file")
                    .contains("zk_auth is set already: use one"));
            assertTrue(refused(key + "\nzk_auth = digest:echo:pw-secret", "zk_auth")
                    .contains("zk_auth_file is set already: use one"));
            refused("zk_auth = digest:a:pw-secret\nzk_auth = digest:b:pw-secret", "zk_auth");
            // Overrides (Config.set, as tools apply them) replace the identity: the later one wins.
            Config c = Config.parse(key);
            c.set("zk_auth", "digest:other:pw-secret");
            assertEquals("digest:other", c.zkAuth().get().toString());
            c.set("zk_auth_file", file.toString());
            assertEquals("digest:echo", c.zkAuth().get().toString());
            c.set("zk_auth", "");
            assertFalse(c.zkAuth().isPresent());
        } finally {
            try (var s = Files.list(dir)) {
                for (Path p : (Iterable<Path>) s::iterator) {
                    Files.delete(p);
                }
            }
            Files.delete(dir);
        }
    }
}
