package rpcproxy.sdk;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.time.Duration;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

import org.apache.thrift.TApplicationException;
import org.apache.thrift.protocol.TMessage;
import org.junit.After;
import org.junit.Before;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.Timeout;

import rpcproxy.echo.Echo;

/** The endpoint side of SPEC §4 on a bare connection: what the proxy sees of a Java service. */
public class WireTest {
    @Rule
    public Timeout timeout = Timeout.seconds(60);

    private Stack stack;
    private RpcService service;

    @Before
    public void up() throws Exception {
        stack = new Stack();
        service = stack.service(stack.serviceConfig("echo", "stand_alone", 1, "max_frame_size", 1000,
                "quiet_period", 0.2, "stop_timeout", 5), "raw");
    }

    @After
    public void down() throws Exception {
        stack.close();
    }

    private static byte[] echoCall(String name, int seqid, String message) throws Exception {
        return RawConn.frame(name, Wire.CALL, seqid, new Echo.echo_args(message));
    }

    @Test
    public void heartbeatsAreEchoedUnchanged() throws Exception {
        try (RawConn c = new RawConn(service.address())) {
            byte[] ping = RawConn.frame("ping", Wire.HEARTBEAT, 7, null);
            c.send(ping);
            byte[] back = c.read();
            assertArrayEquals(java.util.Arrays.copyOfRange(ping, 4, ping.length), back);
            // A heartbeat with a body comes back as it was, too.
            byte[] odd = RawConn.frame("ping", Wire.HEARTBEAT, 8, new Echo.echo_args("x"));
            c.send(odd);
            assertArrayEquals(java.util.Arrays.copyOfRange(odd, 4, odd.length), c.read());
            assertEquals("heartbeats are not requests", 0, service.requests());
        }
    }

    @Test
    public void serviceSpecificPrefixIsStrippedAndRepliesAreBare() throws Exception {
        try (RawConn c = new RawConn(service.address())) {
            c.send(echoCall("echo:echo", 41, "hi"));
            Echo.echo_result r = new Echo.echo_result();
            TMessage m = RawConn.decode(c.read(), r);
            assertEquals("echo", m.name);
            assertEquals(41, m.seqid);
            assertEquals(Wire.REPLY, m.type);
            assertEquals("hi", r.getSuccess());
        }
    }

    @Test
    public void pipelinedRequestsAreAnsweredAsTheyFinish() throws Exception {
        try (RawConn c = new RawConn(service.address())) {
            c.send(RawConn.frame("sleep", Wire.CALL, 1, new Echo.sleep_args(400)));
            c.send(echoCall("echo", 2, "fast"));
            Echo.echo_result fast = new Echo.echo_result();
            TMessage first = RawConn.decode(c.read(), fast);
            assertEquals(2, first.seqid);
            assertEquals("fast", fast.getSuccess());
            Echo.sleep_result slow = new Echo.sleep_result();
            TMessage second = RawConn.decode(c.read(), slow);
            assertEquals(1, second.seqid);
            assertEquals("raw", slow.getSuccess());
        }
    }

    @Test
    public void manySlowRequestsRunConcurrently() throws Exception {
        try (RawConn c = new RawConn(service.address())) {
            long t0 = System.nanoTime();
            for (int i = 0; i < 20; i++) {
                c.send(RawConn.frame("sleep", Wire.CALL, i, new Echo.sleep_args(300)));
            }
            for (int i = 0; i < 20; i++) {
                RawConn.decode(c.read(), new Echo.sleep_result());
            }
            long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
            assertTrue("20 calls of 300 ms took " + ms + " ms", ms < 3000);
        }
    }

    @Test
    public void onewayGetsNoReplyAndRuns() throws Exception {
        try (RawConn c = new RawConn(service.address())) {
            c.send(RawConn.frame("notify", Wire.ONEWAY, 1, new Echo.notify_args("x")));
            c.send(echoCall("echo", 2, "after"));
            TMessage m = RawConn.decode(c.read(), new Echo.echo_result());
            assertEquals("the oneway got no reply", 2, m.seqid);
            Stack.waitUntil(() -> service.requests() == 2, Duration.ofSeconds(5), "both requests counted");
        }
    }

    @Test
    public void handlerFailuresBecomeExceptionsAndServingGoesOn() throws Exception {
        try (RawConn c = new RawConn(service.address())) {
            c.send(echoCall("echo", 5, "panic"));
            TApplicationException x = RawConn.exception(c.read());
            assertEquals(TApplicationException.INTERNAL_ERROR, x.getType());
            c.send(echoCall("nosuch", 6, "x"));
            assertEquals(TApplicationException.UNKNOWN_METHOD, RawConn.exception(c.read()).getType());
            c.send(echoCall("echo", 7, "still here"));
            Echo.echo_result r = new Echo.echo_result();
            RawConn.decode(c.read(), r);
            assertEquals("still here", r.getSuccess());
        }
    }

    @Test
    public void badInputClosesOnlyThatConnection() throws Exception {
        try (RawConn good = new RawConn(service.address())) {
            // Longer than max_frame_size (1000 here).
            try (RawConn c = new RawConn(service.address())) {
                c.send(new byte[] {0, 0, 0x10, 0});
                TApplicationException x = RawConn.exception(c.read());
                assertEquals(TApplicationException.PROTOCOL_ERROR, x.getType());
                assertTrue(x.getMessage(), x.getMessage().contains("exceeds the maximum"));
                assertTrue(c.closedByPeer());
            }
            // The old (non-strict) header: rejected cleanly.
            try (RawConn c = new RawConn(service.address())) {
                byte[] name = "echo".getBytes();
                java.nio.ByteBuffer b = java.nio.ByteBuffer.allocate(4 + 4 + name.length + 1 + 4 + 1);
                b.putInt(b.capacity() - 4).putInt(name.length).put(name).put(Wire.CALL).putInt(1).put((byte) 0);
                c.send(b.array());
                TApplicationException x = RawConn.exception(c.read());
                assertEquals(TApplicationException.PROTOCOL_ERROR, x.getType());
                assertTrue(x.getMessage(), x.getMessage().contains("non-strict"));
                assertTrue(c.closedByPeer());
            }
            // A reply sent to a service is not something it accepts.
            try (RawConn c = new RawConn(service.address())) {
                c.send(RawConn.frame("echo", Wire.REPLY, 3, new Echo.echo_result()));
                assertEquals(TApplicationException.PROTOCOL_ERROR, RawConn.exception(c.read()).getType());
                assertTrue(c.closedByPeer());
            }
            good.send(echoCall("echo", 1, "unaffected"));
            Echo.echo_result r = new Echo.echo_result();
            RawConn.decode(good.read(), r);
            assertEquals("unaffected", r.getSuccess());
        }
    }

    @Test
    public void stopCompletesACallInFlightThenCloses() throws Exception {
        try (RawConn c = new RawConn(service.address())) {
            c.send(RawConn.frame("sleep", Wire.CALL, 9, new Echo.sleep_args(600)));
            Stack.waitUntil(() -> service.inflight() == 1, Duration.ofSeconds(5), "the call to start");
            long t0 = System.nanoTime();
            CompletableFuture<Void> stopped = CompletableFuture.runAsync(service::stop);
            Echo.sleep_result r = new Echo.sleep_result();
            TMessage m = RawConn.decode(c.read(), r);
            assertEquals(9, m.seqid);
            assertEquals("raw", r.getSuccess());
            stopped.get(10, TimeUnit.SECONDS);
            long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
            assertTrue("stop took " + ms + " ms", ms < 5000);
            assertEquals(0, service.inflight());
            assertTrue(c.closedByPeer());
        }
        try (RawConn c = new RawConn(service.address())) {
            fail("still accepting after stop");
        } catch (java.io.IOException expected) {
            // refused: nothing listens any more
        }
    }

    @Test
    public void stopTimeoutBoundsAStuckCall() throws Exception {
        RpcService slow = stack.service(stack.serviceConfig("echo", "stand_alone", 1, "quiet_period", 0.1,
                "stop_timeout", 0.8), "stuck");
        try (RawConn c = new RawConn(slow.address())) {
            c.send(RawConn.frame("sleep", Wire.CALL, 1, new Echo.sleep_args(20_000)));
            Stack.waitUntil(() -> slow.inflight() == 1, Duration.ofSeconds(5), "the call to start");
            long t0 = System.nanoTime();
            slow.stop();
            long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
            assertTrue("stop took " + ms + " ms", ms < 3000);
            assertTrue(c.closedByPeer());
        }
    }
}
