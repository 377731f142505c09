package rpcproxy.sdk;

import java.io.Closeable;
import java.time.Duration;
import java.util.ArrayDeque;
import java.util.Deque;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;

import org.apache.thrift.TException;
import org.apache.thrift.protocol.TProtocol;
import org.apache.thrift.protocol.TProtocolException;
import org.apache.thrift.transport.TTransportException;

/**
 * A thread-safe, bounded pool of proxy connections, as the Python SDK's
 * {@code ClientPool}: at most {@code size} connections exist; a caller
 * waits up to {@code acquireTimeout} for one and then gets
 * {@link PoolTimeout}. A connection that failed (transport or protocol
 * error, or a reply left unread) is closed, not returned; declared
 * exceptions and {@code TApplicationException} leave it in the pool.
 *
 * <pre>{@code
 * ClientPool pool = new ClientPool("127.0.0.1:5550", "echo", 8, Duration.ofSeconds(5));
 * String s = pool.call(Echo.Client::new, c -> c.echo("hi"));
 * try (ClientPool.Lease<Echo.Client> c = pool.client(Echo.Client::new)) {
 *     c.get().add(1, 2);
 * }
 * }</pre>
 */
public final class ClientPool implements Closeable {
    /** A call made with a pooled client. */
    @FunctionalInterface
    public interface Call<C, R> {
        R apply(C client) throws TException;
    }

    /** No connection became free within the pool's acquire timeout. */
    public static final class PoolTimeout extends TTransportException {
        private static final long serialVersionUID = 1L;

        PoolTimeout(String message) {
            super(TTransportException.TIMED_OUT, message);
        }
    }

    private final Address address;
    private final String service;
    private final int size;
    private final Duration timeout;
    private final Duration connectTimeout;
    private final Duration acquireTimeout;
    private final int maxFrameSize;
    private final Semaphore slots;
    private final Deque<ProxyClient> idle = new ArrayDeque<>();
    private volatile boolean closed;
    private int created;
    private int discarded;

    public ClientPool(String address, String service, int size, Duration timeout) {
        this(Address.parse(address), service, size, timeout, Duration.ofSeconds(5), timeout,
                Wire.DEFAULT_MAX_FRAME_SIZE);
    }

    /** @param service the default service of {@link #client(Function)} and {@link #call(Function, Call)} (may be null) */
    public ClientPool(Address address, String service, int size, Duration timeout, Duration connectTimeout,
                      Duration acquireTimeout, int maxFrameSize) {
        if (size < 1) {
            throw new IllegalArgumentException("pool size must be at least 1");
        }
        this.address = address;
        this.service = service;
        this.size = size;
        this.timeout = timeout;
        this.connectTimeout = connectTimeout;
        this.acquireTimeout = acquireTimeout;
        this.maxFrameSize = maxFrameSize;
        this.slots = new Semaphore(size);
    }

    /** Runs {@code call} with a client of the pool's service on a pooled connection. */
    public <C, R> R call(Function<TProtocol, C> factory, Call<C, R> call) throws TException {
        return call(factory, service, call);
    }

    public <C, R> R call(Function<TProtocol, C> factory, String service, Call<C, R> call) throws TException {
        try (Lease<C> lease = client(factory, service)) {
            try {
                return call.apply(lease.get());
            } catch (TTransportException | TProtocolException | RuntimeException e) {
                lease.broken();
                throw e;
            }
        }
    }

    /** A generated client of the pool's service, bound to a pooled connection until the lease is closed. */
    public <C> Lease<C> client(Function<TProtocol, C> factory) throws TTransportException {
        return client(factory, service);
    }

    public <C> Lease<C> client(Function<TProtocol, C> factory, String service) throws TTransportException {
        if (service == null) {
            throw new IllegalArgumentException("no service given and the pool has no default service");
        }
        ProxyClient conn = acquire();
        try {
            return new Lease<>(conn, conn.client(factory, service));
        } catch (RuntimeException e) {
            release(conn, true);
            throw e;
        }
    }

    /** A pooled connection itself, until the lease is closed. */
    public Lease<ProxyClient> connection() throws TTransportException {
        ProxyClient conn = acquire();
        return new Lease<>(conn, conn);
    }

    private ProxyClient acquire() throws TTransportException {
        if (closed) {
            throw new TTransportException(TTransportException.NOT_OPEN, "pool is closed");
        }
        boolean got;
        try {
            got = acquireTimeout == null ? acquireNow() : slots.tryAcquire(acquireTimeout.toMillis(), TimeUnit.MILLISECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new TTransportException(TTransportException.UNKNOWN, "interrupted waiting for a connection");
        }
        if (!got) {
            throw new PoolTimeout("no free connection to " + address + " within " + acquireTimeout);
        }
        synchronized (idle) {
            ProxyClient c = idle.pollLast();
            if (c != null) {
                return c;
            }
            created++;
        }
        return new ProxyClient(address, timeout, connectTimeout, maxFrameSize);
    }

    private boolean acquireNow() throws InterruptedException {
        slots.acquire();
        return true;
    }

    private void release(ProxyClient conn, boolean broken) {
        try {
            if (broken || !conn.usable() || closed) {
                conn.close();
                synchronized (idle) {
                    discarded++;
                }
            } else {
                synchronized (idle) {
                    idle.addLast(conn);
                }
            }
        } finally {
            slots.release();
        }
    }

    public int size() {
        return size;
    }

    /** Connections waiting in the pool. */
    public int idle() {
        synchronized (idle) {
            return idle.size();
        }
    }

    /** Connections made so far. */
    public int created() {
        synchronized (idle) {
            return created;
        }
    }

    /** Connections closed instead of being returned. */
    public int discarded() {
        synchronized (idle) {
            return discarded;
        }
    }

    /** Closes idle connections; connections in use close when released. */
    @Override
    public void close() {
        closed = true;
        synchronized (idle) {
            for (ProxyClient c : idle) {
                c.close();
            }
            idle.clear();
        }
    }

    /** One checkout: {@link #get()} until {@link #close()} returns (or discards) the connection. */
    public final class Lease<C> implements AutoCloseable {
        private final ProxyClient conn;
        private final C client;
        private boolean broken;
        private boolean released;

        Lease(ProxyClient conn, C client) {
            this.conn = conn;
            this.client = client;
        }

        public C get() {
            if (released) {
                throw new IllegalStateException("lease already returned");
            }
            return client;
        }

        public ProxyClient connection() {
            return conn;
        }

        /** Closes the connection instead of returning it. */
        public void broken() {
            broken = true;
        }

        @Override
        public void close() {
            if (!released) {
                released = true;
                release(conn, broken);
            }
        }
    }
}
