package rpcproxy.sdk;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.nio.file.Path;
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
}
