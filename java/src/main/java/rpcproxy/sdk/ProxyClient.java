package rpcproxy.sdk;

import java.io.Closeable;
import java.time.Duration;
import java.util.function.Function;

import org.apache.thrift.protocol.TBinaryProtocol;
import org.apache.thrift.protocol.TMultiplexedProtocol;
import org.apache.thrift.protocol.TProtocol;
import org.apache.thrift.transport.TTransportException;

/**
 * One connection to the local proxy (SPEC §3), shared by any number of
 * generated clients: framed transport, binary protocol and
 * {@code TMultiplexedProtocol(service)}, so method names go out as
 * {@code service:method}. One call at a time: not thread-safe, use
 * {@link ClientPool} across threads.
 *
 * <pre>{@code
 * try (ProxyClient conn = new ProxyClient("127.0.0.1:5550", Duration.ofSeconds(5))) {
 *     Echo.Client echo = conn.client(Echo.Client::new, "echo");
 *     echo.echo("hello");
 * }
 * }</pre>
 */
public final class ProxyClient implements Closeable {
    public static final String DEFAULT_PROXY_ADDRESS = "127.0.0.1:5550";

    private final ProxyTransport transport;
    private final TBinaryProtocol binary;

    public ProxyClient(String address, Duration timeout) {
        this(Address.parse(address), timeout, Duration.ofSeconds(5), Wire.DEFAULT_MAX_FRAME_SIZE);
    }

    /**
     * @param timeout longest wait for a reply (null: none); the proxy's own
     *     deadline ({@code rpc_timeout}, 15 s by default) applies anyway
     * @param connectTimeout longest wait for a TCP connection (null: none)
     */
    public ProxyClient(Address address, Duration timeout, Duration connectTimeout, int maxFrameSize) {
        this.transport = new ProxyTransport(address, timeout, connectTimeout, maxFrameSize);
        this.binary = new TBinaryProtocol(transport);
    }

    /** Connects now rather than at the first call (fails if the proxy cannot be reached). */
    public ProxyClient open() throws TTransportException {
        transport.open();
        return this;
    }

    /** The protocol to hand to a generated client for {@code service}. */
    public TProtocol protocol(String service) {
        if (service == null || service.isEmpty() || service.contains(":")) {
            throw new IllegalArgumentException("bad service name \"" + service + "\"");
        }
        return new TMultiplexedProtocol(binary, service);
    }

    /** {@code factory.apply(protocol(service))}, e.g. {@code client(Echo.Client::new, "echo")}. */
    public <C> C client(Function<TProtocol, C> factory, String service) {
        return factory.apply(protocol(service));
    }

    /** False while a reply is still owed (the stream is out of step) or after a transport error. */
    public boolean usable() {
        return transport.pending() == 0 && !transport.broken();
    }

    public ProxyTransport transport() {
        return transport;
    }

    @Override
    public void close() {
        transport.close();
    }
}
