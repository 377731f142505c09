package rpcproxy.sdk;

import java.io.EOFException;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.SocketTimeoutException;
import java.net.StandardProtocolFamily;
import java.nio.ByteBuffer;
import java.nio.channels.ClosedChannelException;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.Semaphore;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.logging.Level;
import java.util.logging.Logger;

import org.apache.thrift.TConfiguration;
import org.apache.thrift.TException;
import org.apache.thrift.TProcessor;
import org.apache.thrift.protocol.TBinaryProtocol;
import org.apache.thrift.protocol.TMessage;
import org.apache.thrift.protocol.TProtocol;
import org.apache.thrift.protocol.TProtocolDecorator;
import org.apache.thrift.transport.TMemoryInputTransport;
import org.apache.thrift.transport.TTransport;

/**
 * A Thrift service server registered in ZooKeeper or in the embedded local
 * registry (SPEC §4 endpoint side, §6 registration; {@link LocalRegistry}
 * when {@code zk} is unset, {@code local} or {@code local:DIR}), behaving
 * like the Rust SDK's {@code Service}.
 *
 * <p>It listens on the configured front address ({@code front_sock}, else
 * {@code front_host:front_port}, else the first local IPv4 address starting
 * with {@code ip_prefix}), registers {@code /zk/product/{product}/services/
 * {service}/{service_id}} once listening (unless {@code stand_alone=1}),
 * echoes heartbeats unchanged, and runs requests concurrently on a pool of
 * handler threads, writing each reply as soon as it is ready (the proxy
 * pipelines requests and matches replies by seqid). A {@code service:}
 * prefix on a method name is stripped before the processor sees it.
 *
 * <p>{@link #stop()} stops gracefully: deregister first, keep serving until
 * nothing is in flight and no request arrived for {@code quiet_period},
 * then stop reading, write the replies still due and close every
 * connection; the whole stop takes at most {@code stop_timeout}.
 * {@link #run()} serves until SIGTERM or SIGINT, then stops that way.
 */
public final class RpcService {
    private static final Logger LOG = Logger.getLogger(RpcService.class.getName());
    /** Handler threads unless {@link #threads(int)} says otherwise. */
    public static final int DEFAULT_THREADS = 256;

    private final Config config;
    private final TProcessor processor;
    private final TConfiguration thriftConf;
    private String codeUrlVersion = "";
    private int threads = DEFAULT_THREADS;
    private List<Address> binds = new ArrayList<>();
    private ZkRegistry registry;
    private boolean ownsRegistry;
    private LocalRegistry localRegistry;
    private boolean ownsLocalRegistry;

    private final List<ServerSocketChannel> listeners = new ArrayList<>();
    private final List<Address> addresses = new ArrayList<>();
    private final List<Thread> acceptors = new ArrayList<>();
    /** How to deregister each endpoint (from ZooKeeper or the embedded registry). */
    private final List<Runnable> registrations = new ArrayList<>();
    private final Set<Conn> conns = ConcurrentHashMap.newKeySet();
    private ThreadPoolExecutor handlers;
    private Semaphore connectionSlots;

    // What the graceful stop watches.
    private final Object idle = new Object();
    private final AtomicInteger inflight = new AtomicInteger();
    private final AtomicLong requests = new AtomicLong();
    private final AtomicLong connections = new AtomicLong();
    private volatile long lastRequestNanos = System.nanoTime();

    private volatile boolean started;
    /** {@link #stop()} has begun (deregistering, waiting for quiet). */
    private volatile boolean stopping;
    /** Reading has stopped: no connection is accepted or read any more. */
    private volatile boolean closing;
    private final CountDownLatch stopped = new CountDownLatch(1);

    public RpcService(Config config, TProcessor processor) {
        this.config = config;
        this.processor = processor;
        int max = config.maxFrameSize();
        this.thriftConf = new TConfiguration(Math.max(max, TConfiguration.DEFAULT_MAX_MESSAGE_SIZE), max,
                TConfiguration.DEFAULT_RECURSION_DEPTH);
    }

    /** A service configured by the {@code config.ini} at {@code path}. */
    public static RpcService fromConfig(String path, TProcessor processor) {
        return new RpcService(Config.load(path), processor);
    }

    /** The code version recorded in the registry entry ({@code code_url_version}). */
    public RpcService codeUrlVersion(String version) {
        this.codeUrlVersion = version == null ? "" : version;
        return this;
    }

    /** Requests that may run at once across all connections (handler threads). */
    public RpcService threads(int n) {
        if (n < 1) {
            throw new IllegalArgumentException("threads must be at least 1");
        }
        this.threads = n;
        return this;
    }

    /**
     * Listens on these addresses (TCP or Unix, port 0 allowed) instead of
     * the configured front address, and registers each of them.
     */
    public RpcService listenOn(Address... addresses) {
        this.binds = new ArrayList<>(Arrays.asList(addresses));
        return this;
    }

    /** Registers in this registry (left open at stop) instead of opening the one the configuration names. */
    public RpcService registry(ZkRegistry registry) {
        this.registry = registry;
        return this;
    }

    /** The registry the service registered in, once started (none when stand-alone). */
    public java.util.Optional<ZkRegistry> zkRegistry() {
        return java.util.Optional.ofNullable(registry);
    }

    /**
     * Registers in this embedded registry (left open at stop) instead of the
     * one the configuration names.
     */
    public RpcService registry(LocalRegistry registry) {
        this.localRegistry = registry;
        return this;
    }

    /** The embedded registry the service registered in, once started (none with ZooKeeper or stand-alone). */
    public java.util.Optional<LocalRegistry> localRegistry() {
        return java.util.Optional.ofNullable(localRegistry);
    }

    /** Binds, starts serving, then registers. Returns once registered. */
    public synchronized RpcService start() throws IOException, ZkRegistry.RegistryException {
        if (started) {
            throw new IllegalStateException("already started");
        }
        started = true;
        if (binds.isEmpty()) {
            binds.add(config.frontAddress());
        }
        try {
            for (Address bind : binds) {
                ServerSocketChannel l = bind(bind);
                listeners.add(l);
                addresses.add(localAddress(bind, l));
                LOG.info("service listening on " + addresses.get(addresses.size() - 1));
            }
        } catch (IOException e) {
            closeListeners();
            throw e;
        }
        AtomicInteger n = new AtomicInteger();
        handlers = new ThreadPoolExecutor(threads, threads, 60, TimeUnit.SECONDS, new LinkedBlockingQueue<>(), r -> {
            Thread t = new Thread(r, "rpc-handler-" + n.incrementAndGet());
            t.setDaemon(true);
            return t;
        });
        handlers.allowCoreThreadTimeOut(true);
        // One limit on connections across every listener.
        connectionSlots = new Semaphore(config.maxConnections());
        for (int i = 0; i < listeners.size(); i++) {
            ServerSocketChannel l = listeners.get(i);
            Thread t = new Thread(() -> accept(l), "rpc-accept-" + addresses.get(i));
            t.setDaemon(true);
            t.start();
            acceptors.add(t);
        }
        if (config.standAlone()) {
            LOG.info("stand-alone: not registering");
            return this;
        }
        try {
            register();
        } catch (ZkRegistry.RegistryException | RuntimeException e) {
            stopping = true;
            closing = true;
            shutdownNow();
            throw e;
        }
        return this;
    }

    private void register() throws ZkRegistry.RegistryException {
        String service = config.service().orElseThrow(() ->
                new ZkRegistry.RegistryException("`service` is not set (or set stand_alone=1)"));
        // The embedded registry when it is given, or when the configuration
        // names it (zk unset, local or local:DIR) and no ZooKeeper registry is given.
        boolean local = localRegistry != null || (registry == null && config.zk().isEmpty());
        if (local && localRegistry == null) {
            localRegistry = LocalRegistry.open(config);
            ownsLocalRegistry = true;
        } else if (!local && registry == null) {
            registry = ZkRegistry.open(config);
            ownsRegistry = true;
        }
        for (Address a : addresses) {
            Endpoint ep = Endpoint.of(service, a.toString(), codeUrlVersion);
            if (local) {
                registrations.add(localRegistry.register(ep)::deregister);
            } else {
                registrations.add(registry.register(ep)::deregister);
            }
            LOG.info("registered " + service + " at " + a);
        }
    }

    /** Serves until SIGTERM or SIGINT, then stops gracefully and returns. A second signal exits at once. */
    public void run() throws IOException, ZkRegistry.RegistryException, InterruptedException {
        if (!started) {
            start();
        }
        CountDownLatch signalled = new CountDownLatch(1);
        boolean handled = Signals.onTermination(() -> {
            if (signalled.getCount() == 0) {
                LOG.warning("second signal: exiting at once");
                Runtime.getRuntime().halt(1);
            }
            signalled.countDown();
        });
        if (!handled) {
            // No signal API: the JVM's shutdown still stops gracefully.
            Runtime.getRuntime().addShutdownHook(new Thread(this::stop, "rpc-stop"));
            stopped.await();
            return;
        }
        signalled.await();
        LOG.info("signal received, stopping");
        stop();
    }

    /** The addresses actually bound (port 0 resolved, Unix paths absolute), in the order given. */
    public List<Address> addresses() {
        return List.copyOf(addresses);
    }

    /** The (first) address bound. */
    public Address address() {
        return addresses.get(0);
    }

    /** Requests running or waiting for a handler thread right now. */
    public int inflight() {
        return inflight.get();
    }

    /** Connections accepted since the start, on every address. */
    public long connections() {
        return connections.get();
    }

    /** Calls and oneways read since the start (heartbeats are not counted). */
    public long requests() {
        return requests.get();
    }

    /** Waits until {@link #stop()} has finished (from any thread). */
    public boolean awaitStopped(Duration timeout) throws InterruptedException {
        return stopped.await(timeout.toMillis(), TimeUnit.MILLISECONDS);
    }

    /**
     * Graceful stop (SPEC §5's LB stop, as the Rust SDK does it for a
     * service): deregister, serve until idle and quiet, stop reading, write
     * the replies still due, close. At most {@code stop_timeout}.
     */
    public void stop() {
        synchronized (this) {
            if (stopping) {
                awaitQuietly();
                return;
            }
            stopping = true;
        }
        long deadline = System.nanoTime() + config.stopTimeout().toNanos();
        if (!registrations.isEmpty()) {
            for (Runnable r : registrations) {
                r.run();
            }
            registrations.clear();
            LOG.info("deregistered");
        }
        long quiet = config.quietPeriod().toNanos();
        synchronized (idle) {
            while (true) {
                long now = System.nanoTime();
                if (now - deadline >= 0) {
                    LOG.warning("stop timeout reached with " + inflight.get() + " requests in flight");
                    break;
                }
                long quietUntil = lastRequestNanos + quiet;
                if (inflight.get() == 0 && now - quietUntil >= 0) {
                    break;
                }
                long wake = Math.min(Math.max(quietUntil - now, TimeUnit.MILLISECONDS.toNanos(10)), deadline - now);
                try {
                    TimeUnit.NANOSECONDS.timedWait(idle, wake);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    break;
                }
            }
        }
        // Stop accepting and reading; every connection writes the replies still due.
        closing = true;
        closeListeners();
        for (Conn c : conns) {
            c.stopReading(deadline);
        }
        long rest = Math.max(0, deadline - System.nanoTime()) + TimeUnit.MILLISECONDS.toNanos(100);
        long end = System.nanoTime() + rest;
        for (Conn c : conns) {
            try {
                c.reader.join(Math.max(1, TimeUnit.NANOSECONDS.toMillis(end - System.nanoTime())));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                break;
            }
        }
        if (!conns.isEmpty()) {
            LOG.warning("stop timeout reached with " + conns.size() + " connections still open");
            for (Conn c : conns) {
                c.close();
            }
        }
        shutdownNow();
        LOG.info("service stopped");
    }

    private void awaitQuietly() {
        try {
            stopped.await();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private void shutdownNow() {
        closeListeners();
        if (handlers != null) {
            handlers.shutdown();
        }
        for (Runnable r : registrations) {
            r.run();
        }
        registrations.clear();
        if (ownsRegistry && registry != null) {
            registry.close();
        }
        if (ownsLocalRegistry && localRegistry != null) {
            localRegistry.close();
        }
        stopped.countDown();
    }

    // -- listening ----------------------------------------------------------------

    private static ServerSocketChannel bind(Address a) throws IOException {
        if (a.isTcp()) {
            ServerSocketChannel l = ServerSocketChannel.open();
            l.bind(a.socketAddress(), 1024);
            return l;
        }
        // A stale socket file is removed before binding (SPEC §1).
        Files.deleteIfExists(a.path());
        ServerSocketChannel l = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
        l.bind(a.socketAddress(), 1024);
        return l;
    }

    private static Address localAddress(Address bind, ServerSocketChannel l) throws IOException {
        if (bind.isUnix()) {
            return Address.unix(bind.path().toAbsolutePath());
        }
        InetSocketAddress sa = (InetSocketAddress) l.getLocalAddress();
        String host = sa.getAddress().getHostAddress();
        if (host.contains(":")) {
            int pct = host.indexOf('%');
            host = "[" + (pct >= 0 ? host.substring(0, pct) : host) + "]";
        }
        return Address.parse(host + ":" + sa.getPort());
    }

    private void closeListeners() {
        synchronized (listeners) {
            for (int i = 0; i < listeners.size(); i++) {
                try {
                    listeners.get(i).close();
                } catch (IOException e) {
                    // closing anyway
                }
                if (i < addresses.size() && addresses.get(i).isUnix()) {
                    try {
                        Files.deleteIfExists(addresses.get(i).path());
                    } catch (IOException e) {
                        // nothing else to do
                    }
                }
            }
            listeners.clear();
        }
        // The port is free only once no thread is inside accept() on it.
        for (Thread t : acceptors) {
            if (t != Thread.currentThread()) {
                try {
                    t.join(1000);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    return;
                }
            }
        }
    }

    private void accept(ServerSocketChannel l) {
        while (!closing) {
            try {
                connectionSlots.acquire();
            } catch (InterruptedException e) {
                return;
            }
            SocketChannel ch;
            try {
                ch = l.accept();
            } catch (IOException e) {
                connectionSlots.release();
                if (!closing && l.isOpen()) {
                    LOG.log(Level.WARNING, "accept failed", e);
                    continue;
                }
                return;
            }
            connections.incrementAndGet();
            try {
                Conn c = new Conn(ch);
                conns.add(c);
                if (closing) {
                    c.stopReading(System.nanoTime());
                }
                c.reader.start();
            } catch (IOException e) {
                connectionSlots.release();
                closeQuietly(ch);
            }
        }
    }

    private static void closeQuietly(SocketChannel ch) {
        try {
            ch.close();
        } catch (IOException e) {
            // nothing else to do
        }
    }

    // -- one connection -------------------------------------------------------------

    /**
     * One connection from a proxy: a reader thread takes frames off the
     * socket, echoes heartbeats itself and hands each call to a handler
     * thread; replies are written, whole frames under one lock, as they
     * finish. Reading pauses while {@code max_inflight} requests of the
     * connection are unanswered.
     */
    private final class Conn {
        final SocketChannel ch;
        final Thread reader;
        final String peer;
        final Selector readSelector;
        final Object writeLock = new Object();
        Selector writeSelector;
        final Semaphore slots = new Semaphore(config.maxInflight());
        /** Requests of this connection whose reply is not written yet. */
        final AtomicInteger owed = new AtomicInteger();
        volatile boolean stopReading;
        volatile long stopDeadline;

        Conn(SocketChannel ch) throws IOException {
            this.ch = ch;
            ch.configureBlocking(false);
            String p;
            try {
                p = String.valueOf(ch.getRemoteAddress());
            } catch (IOException e) {
                p = "?";
            }
            peer = p;
            readSelector = Selector.open();
            ch.register(readSelector, SelectionKey.OP_READ);
            reader = new Thread(this::serve, "rpc-conn-" + peer);
            reader.setDaemon(true);
        }

        void stopReading(long deadline) {
            stopDeadline = deadline;
            stopReading = true;
            readSelector.wakeup();
        }

        void serve() {
            try {
                ByteBuffer len = ByteBuffer.allocate(4);
                while (!stopReading) {
                    len.clear();
                    if (!read(len, true)) {
                        break; // EOF between frames, or told to stop
                    }
                    int n = len.getInt(0);
                    if (n < 0 || n > config.maxFrameSize()) {
                        String why = n < 0 ? "negative frame length " + n
                                : "frame length " + n + " exceeds the maximum of " + config.maxFrameSize() + " bytes";
                        badInput(why, null);
                        break;
                    }
                    byte[] payload = new byte[n];
                    if (!read(ByteBuffer.wrap(payload), false)) {
                        break;
                    }
                    Wire.Header h;
                    try {
                        h = Wire.header(payload);
                    } catch (Wire.BadMessage e) {
                        badInput(e.getMessage(), null);
                        break;
                    }
                    if (h.type == Wire.HEARTBEAT) {
                        write(ByteBuffer.allocate(4).putInt(0, n), ByteBuffer.wrap(payload));
                    } else if (h.type == Wire.CALL || h.type == Wire.ONEWAY) {
                        // At max_inflight unanswered requests, reading pauses.
                        while (!slots.tryAcquire(50, TimeUnit.MILLISECONDS)) {
                            if (stopReading || !ch.isOpen()) {
                                return;
                            }
                        }
                        dispatch(h, payload);
                    } else {
                        badInput("unexpected message type " + h.type + " sent to a service", h);
                        break;
                    }
                }
            } catch (EOFException | ClosedChannelException e) {
                // the peer went away mid-frame, or we closed
            } catch (SocketTimeoutException e) {
                LOG.warning(peer + ": " + e.getMessage() + "; closing connection");
            } catch (IOException e) {
                if (!stopReading) {
                    LOG.fine(peer + ": " + e);
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            } catch (RuntimeException e) {
                LOG.log(Level.WARNING, peer + ": connection failed", e);
            } finally {
                finish();
            }
        }

        /**
         * Fills {@code dst}. Waits without limit for the first byte of a
         * frame (returning false on EOF or when told to stop), then at most
         * {@code frame_timeout} for the rest.
         */
        boolean read(ByteBuffer dst, boolean atBoundary) throws IOException {
            long frameDeadline = 0;
            boolean started = !atBoundary;
            if (started) {
                frameDeadline = System.nanoTime() + config.frameTimeout().toNanos();
            }
            while (dst.hasRemaining()) {
                if (stopReading) {
                    return false;
                }
                int r = ch.read(dst);
                if (r < 0) {
                    if (!started) {
                        return false;
                    }
                    throw new EOFException();
                }
                if (r > 0) {
                    if (!started) {
                        started = true;
                        frameDeadline = System.nanoTime() + config.frameTimeout().toNanos();
                    }
                    continue;
                }
                long waitMs = 0;
                if (started) {
                    long left = frameDeadline - System.nanoTime();
                    if (left <= 0) {
                        throw new SocketTimeoutException("a frame took more than " + config.frameTimeout() + " to arrive");
                    }
                    waitMs = Math.max(1, TimeUnit.NANOSECONDS.toMillis(left));
                }
                readSelector.select(waitMs);
                readSelector.selectedKeys().clear();
            }
            return true;
        }

        void dispatch(Wire.Header h, byte[] payload) {
            requests.incrementAndGet();
            lastRequestNanos = System.nanoTime();
            inflight.incrementAndGet();
            owed.incrementAndGet();
            try {
                handlers.execute(() -> handle(h, payload));
            } catch (RejectedExecutionException e) {
                reply(h, Wire.applicationException(h.bareName(), h.seqid, Wire.INTERNAL_ERROR,
                        "service is stopping"));
            }
        }

        void handle(Wire.Header h, byte[] payload) {
            byte[] frame = null;
            try {
                frame = process(h, payload);
            } catch (Throwable t) {
                LOG.log(Level.WARNING, "handler of " + h.bareName() + " failed", t);
                if (h.type == Wire.CALL) {
                    frame = Wire.applicationException(h.bareName(), h.seqid, Wire.INTERNAL_ERROR,
                            "handler failed: " + t);
                }
            } finally {
                reply(h, frame);
            }
        }

        /** Writes {@code frame} (if any), then counts the request as answered. */
        void reply(Wire.Header h, byte[] frame) {
            try {
                if (frame != null) {
                    write(ByteBuffer.wrap(frame));
                }
            } catch (IOException e) {
                LOG.fine(peer + ": reply to " + h.bareName() + " not written: " + e);
                close();
            } finally {
                slots.release();
                owed.decrementAndGet();
                int left = inflight.decrementAndGet();
                if (left == 0 || owed.get() == 0) {
                    synchronized (idle) {
                        idle.notifyAll();
                    }
                }
            }
        }

        /** Runs the processor over in-memory transports; the reply frame, or null for a oneway call. */
        byte[] process(Wire.Header h, byte[] payload) throws TException {
            TMemoryInputTransport in = new TMemoryInputTransport(thriftConf, payload);
            OutBuffer out = new OutBuffer(thriftConf);
            TException failure = null;
            try {
                processor.process(new BareNames(new TBinaryProtocol(in)), new TBinaryProtocol(out));
            } catch (TException e) {
                failure = e;
                LOG.log(Level.WARNING, "thrift processor failed on " + h.bareName(), e);
            }
            if (h.type == Wire.ONEWAY) {
                return null;
            }
            if (out.payloadLength() == 0) {
                // The processor gave up before writing anything.
                String why = failure != null ? failure.toString() : "the processor wrote no reply";
                return Wire.applicationException(h.bareName(), h.seqid, Wire.INTERNAL_ERROR, why);
            }
            return out.frame();
        }

        void badInput(String why, Wire.Header h) {
            LOG.warning("bad input from " + peer + ": " + why + "; closing connection");
            byte[] frame = Wire.applicationException(h == null ? "" : h.bareName(), h == null ? 0 : h.seqid,
                    Wire.PROTOCOL_ERROR, why);
            try {
                write(ByteBuffer.wrap(frame));
            } catch (IOException e) {
                // closing anyway
            }
        }

        void write(ByteBuffer... bufs) throws IOException {
            synchronized (writeLock) {
                long deadline = 0;
                while (bufs[bufs.length - 1].hasRemaining()) {
                    if (ch.write(bufs) > 0) {
                        continue;
                    }
                    // The peer is not reading: wait, at most frame_timeout, for room.
                    if (writeSelector == null) {
                        writeSelector = Selector.open();
                        ch.register(writeSelector, SelectionKey.OP_WRITE);
                    }
                    long now = System.nanoTime();
                    if (deadline == 0) {
                        deadline = now + config.frameTimeout().toNanos();
                    } else if (now - deadline >= 0) {
                        throw new SocketTimeoutException("peer did not read a reply within " + config.frameTimeout());
                    }
                    writeSelector.select(Math.max(1, TimeUnit.NANOSECONDS.toMillis(deadline - now)));
                    writeSelector.selectedKeys().clear();
                }
            }
        }

        /** After reading ends: let the replies still due be written, then close. */
        void finish() {
            long end = closing ? stopDeadline : System.nanoTime() + config.stopTimeout().toNanos();
            while (owed.get() > 0 && ch.isOpen() && System.nanoTime() - end < 0) {
                synchronized (idle) {
                    if (owed.get() == 0) {
                        break;
                    }
                    try {
                        idle.wait(10);
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                        break;
                    }
                }
            }
            close();
            try {
                readSelector.close();
                synchronized (writeLock) {
                    if (writeSelector != null) {
                        writeSelector.close();
                    }
                }
            } catch (IOException e) {
                // nothing else to do
            }
            conns.remove(this);
            connectionSlots.release();
        }

        /** Closes the socket; the reader, if it is waiting, wakes up and ends. */
        void close() {
            try {
                ch.close();
            } catch (IOException e) {
                // nothing else to do
            }
            readSelector.wakeup();
        }
    }

    /** The request protocol: method names reach the processor without a {@code service:} prefix. */
    private static final class BareNames extends TProtocolDecorator {
        BareNames(TProtocol p) {
            super(p);
        }

        @Override
        public TMessage readMessageBegin() throws TException {
            TMessage m = super.readMessageBegin();
            int colon = m.name.indexOf(':');
            return colon < 0 ? m : new TMessage(m.name.substring(colon + 1), m.type, m.seqid);
        }
    }

    /** The reply buffer: a growable array with room for the frame length in front. */
    private static final class OutBuffer extends TTransport {
        private final TConfiguration conf;
        private byte[] buf = new byte[256];
        private int len = 4;

        OutBuffer(TConfiguration conf) {
            this.conf = conf;
        }

        int payloadLength() {
            return len - 4;
        }

        byte[] frame() {
            int n = len - 4;
            buf[0] = (byte) (n >>> 24);
            buf[1] = (byte) (n >>> 16);
            buf[2] = (byte) (n >>> 8);
            buf[3] = (byte) n;
            return len == buf.length ? buf : Arrays.copyOf(buf, len);
        }

        @Override
        public void write(byte[] b, int off, int n) {
            if (len + n > buf.length) {
                buf = Arrays.copyOf(buf, Math.max(buf.length * 2, len + n));
            }
            System.arraycopy(b, off, buf, len, n);
            len += n;
        }

        @Override
        public int read(byte[] b, int off, int n) {
            throw new UnsupportedOperationException("write-only buffer");
        }

        @Override
        public boolean isOpen() {
            return true;
        }

        @Override
        public void open() {
        }

        @Override
        public void close() {
        }

        @Override
        public TConfiguration getConfiguration() {
            return conf;
        }

        @Override
        public void updateKnownMessageSize(long size) {
        }

        @Override
        public void checkReadBytesAvailable(long n) {
        }
    }
}
