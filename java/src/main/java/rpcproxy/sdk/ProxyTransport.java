package rpcproxy.sdk;

import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.StandardSocketOptions;
import java.nio.ByteBuffer;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.SocketChannel;
import java.time.Duration;
import java.util.Arrays;
import java.util.concurrent.TimeUnit;

import org.apache.thrift.TConfiguration;
import org.apache.thrift.transport.TTransport;
import org.apache.thrift.transport.TTransportException;

/**
 * Framed transport to the local proxy (TCP or Unix socket) that reconnects
 * between calls, as the Python SDK's {@code ProxyTransport} does.
 *
 * <p>Before a request is written on a connection with no reply
 * outstanding, the connection is checked: if the proxy closed it (or it
 * failed) since the last call, a new one is dialled and the request goes
 * there. A request is resent only when it provably did not reach the old
 * connection, so a call never runs twice. A failure while a reply is
 * awaited (timeout, reset) closes the connection and raises; the next call
 * reconnects. Not thread-safe: one call at a time (see {@link ClientPool}).
 */
public final class ProxyTransport extends TTransport {
    private final Address address;
    private final Duration timeout;
    private final Duration connectTimeout;
    private final int maxFrameSize;
    private final TConfiguration conf;

    private SocketChannel ch;
    private Selector selector;
    private SelectionKey key;

    private byte[] wbuf = new byte[256];
    private int wlen = 4; // room for the frame length
    private byte[] rbuf = new byte[0];
    private int rpos;

    private int pending;
    private int connects;
    private boolean broken;

    /**
     * @param timeout longest wait for a reply (null: none)
     * @param connectTimeout longest wait for a TCP connection (null: none)
     */
    public ProxyTransport(Address address, Duration timeout, Duration connectTimeout, int maxFrameSize) {
        this.address = address;
        this.timeout = timeout;
        this.connectTimeout = connectTimeout;
        this.maxFrameSize = maxFrameSize;
        this.conf = new TConfiguration(Math.max(maxFrameSize, TConfiguration.DEFAULT_MAX_MESSAGE_SIZE),
                maxFrameSize, TConfiguration.DEFAULT_RECURSION_DEPTH);
    }

    public Address address() {
        return address;
    }

    /** Requests written whose reply has not been read yet. */
    public int pending() {
        return pending;
    }

    /** Connections opened so far. */
    public int connects() {
        return connects;
    }

    /** True once a transport or framing error closed the connection (until the next open). */
    public boolean broken() {
        return broken;
    }

    @Override
    public boolean isOpen() {
        return ch != null;
    }

    @Override
    public void open() throws TTransportException {
        if (ch != null) {
            return;
        }
        SocketChannel c = null;
        try {
            if (address.isTcp()) {
                c = SocketChannel.open();
                c.setOption(StandardSocketOptions.TCP_NODELAY, true);
                c.configureBlocking(false);
                Selector s = Selector.open();
                try {
                    if (!c.connect(address.socketAddress())) {
                        c.register(s, SelectionKey.OP_CONNECT);
                        long ms = connectTimeout == null ? 0 : Math.max(1, connectTimeout.toMillis());
                        if (s.select(ms) == 0) {
                            throw new IOException("connect timed out after " + connectTimeout);
                        }
                        c.finishConnect();
                    }
                } finally {
                    s.close();
                }
            } else {
                c = SocketChannel.open(StandardProtocolFamily.UNIX);
                c.connect(address.socketAddress());
                c.configureBlocking(false);
            }
            selector = Selector.open();
            key = c.register(selector, SelectionKey.OP_READ);
        } catch (IOException | RuntimeException e) {
            if (c != null) {
                try {
                    c.close();
                } catch (IOException ignored) {
                    // nothing else to do
                }
            }
            throw new TTransportException(TTransportException.NOT_OPEN,
                    "cannot connect to proxy at " + address + ": " + e.getMessage(), e);
        }
        ch = c;
        broken = false;
        connects++;
    }

    @Override
    public void close() {
        SocketChannel c = ch;
        ch = null;
        rbuf = new byte[0];
        rpos = 0;
        pending = 0;
        if (c != null) {
            try {
                c.close();
                selector.close();
            } catch (IOException e) {
                // nothing else to do
            }
        }
    }

    private TTransportException fail(int type, String message, Throwable cause) {
        close();
        broken = true;
        return new TTransportException(type, message, cause);
    }

    @Override
    public void write(byte[] b, int off, int len) {
        if (wlen + len > wbuf.length) {
            wbuf = Arrays.copyOf(wbuf, Math.max(wbuf.length * 2, wlen + len));
        }
        System.arraycopy(b, off, wbuf, wlen, len);
        wlen += len;
    }

    @Override
    public void flush() throws TTransportException {
        int n = wlen - 4;
        if (n == 0) {
            return;
        }
        byte[] frame = wbuf;
        wbuf = new byte[256];
        wlen = 4;
        if (n > maxFrameSize) {
            throw new TTransportException(TTransportException.UNKNOWN,
                    "request of " + n + " bytes exceeds max_frame_size " + maxFrameSize);
        }
        ByteBuffer.wrap(frame).putInt(0, n);
        // A strict header's fourth byte is the message type: oneways get no reply.
        boolean expectsReply = !(n >= 4 && (frame[4] & 0x80) != 0 && frame[7] == Wire.ONEWAY);
        if (ch != null && pending == 0 && !healthy()) {
            close();
        }
        boolean fresh = ch == null;
        open();
        try {
            send(frame, n + 4);
        } catch (IOException e) {
            // The proxy cannot have a complete frame: when nothing else was
            // outstanding, one resend on a new connection is safe.
            boolean retry = !fresh && pending == 0;
            close();
            if (!retry) {
                throw fail(TTransportException.UNKNOWN, "sending to proxy: " + e.getMessage(), e);
            }
            open();
            try {
                send(frame, n + 4);
            } catch (IOException e2) {
                throw fail(TTransportException.UNKNOWN, "sending to proxy: " + e2.getMessage(), e2);
            }
        }
        if (expectsReply) {
            pending++;
        }
    }

    private void send(byte[] frame, int len) throws IOException {
        ByteBuffer b = ByteBuffer.wrap(frame, 0, len);
        long deadline = timeout == null ? 0 : System.nanoTime() + timeout.toNanos();
        while (b.hasRemaining()) {
            if (ch.write(b) > 0) {
                continue;
            }
            key.interestOps(SelectionKey.OP_WRITE);
            try {
                await(deadline, "sending to proxy");
            } finally {
                key.interestOps(SelectionKey.OP_READ);
            }
        }
    }

    /** False if the idle connection was closed by the peer or holds unexpected bytes. */
    private boolean healthy() {
        try {
            int ready = selector.selectNow();
            selector.selectedKeys().clear();
            return ready == 0;
        } catch (IOException | RuntimeException e) {
            return false;
        }
    }

    private void await(long deadline, String what) throws IOException {
        long ms = 0;
        if (deadline != 0) {
            long left = deadline - System.nanoTime();
            if (left <= 0) {
                throw new java.net.SocketTimeoutException(what + ": no progress within " + timeout);
            }
            ms = Math.max(1, TimeUnit.NANOSECONDS.toMillis(left));
        }
        selector.select(ms);
        selector.selectedKeys().clear();
    }

    @Override
    public int read(byte[] b, int off, int len) throws TTransportException {
        if (rpos >= rbuf.length) {
            readFrame();
        }
        int n = Math.min(len, rbuf.length - rpos);
        System.arraycopy(rbuf, rpos, b, off, n);
        rpos += n;
        return n;
    }

    private void readFrame() throws TTransportException {
        if (ch == null) {
            throw new TTransportException(TTransportException.NOT_OPEN, "not connected");
        }
        long deadline = timeout == null ? 0 : System.nanoTime() + timeout.toNanos();
        ByteBuffer len = ByteBuffer.allocate(4);
        recv(len, deadline);
        int n = len.getInt(0);
        if (n < 0 || n > maxFrameSize) {
            throw fail(TTransportException.CORRUPTED_DATA,
                    "reply frame length " + n + " outside 0..=" + maxFrameSize, null);
        }
        byte[] frame = new byte[n];
        recv(ByteBuffer.wrap(frame), deadline);
        rbuf = frame;
        rpos = 0;
        if (pending > 0) {
            pending--;
        }
    }

    private void recv(ByteBuffer dst, long deadline) throws TTransportException {
        try {
            while (dst.hasRemaining()) {
                int r = ch.read(dst);
                if (r < 0) {
                    throw fail(TTransportException.END_OF_FILE,
                            "proxy at " + address + " closed the connection", null);
                }
                if (r == 0) {
                    await(deadline, "reading from proxy");
                }
            }
        } catch (java.net.SocketTimeoutException e) {
            throw fail(TTransportException.TIMED_OUT,
                    "no reply from proxy at " + address + " within " + timeout, e);
        } catch (IOException e) {
            throw fail(TTransportException.UNKNOWN, "reading from proxy: " + e.getMessage(), e);
        }
    }

    // Direct access to the current reply frame (TBinaryProtocol's fast path).

    @Override
    public byte[] getBuffer() {
        return rbuf;
    }

    @Override
    public int getBufferPosition() {
        return rpos;
    }

    @Override
    public int getBytesRemainingInBuffer() {
        return rbuf.length - rpos;
    }

    @Override
    public void consumeBuffer(int len) {
        rpos += len;
    }

    @Override
    public TConfiguration getConfiguration() {
        return conf;
    }

    @Override
    public void updateKnownMessageSize(long size) {
    }

    @Override
    public void checkReadBytesAvailable(long numBytes) {
    }
}
