package rpcproxy.sdk;

import java.util.concurrent.atomic.AtomicInteger;

import org.apache.thrift.TException;

import rpcproxy.echo.Echo;
import rpcproxy.echo.EchoError;

/** The example Echo service (examples/thrift/echo.thrift); answers that identify a server carry its name. */
public final class EchoHandler implements Echo.Iface {
    private final String name;
    public final AtomicInteger notified = new AtomicInteger();

    public EchoHandler(String name) {
        this.name = name;
    }

    @Override
    public String echo(String message) throws TException {
        if (message.equals("who")) {
            return name;
        }
        if (message.equals("panic")) {
            throw new IllegalStateException("handler panicked on purpose");
        }
        return message;
    }

    @Override
    public long add(long a, long b) {
        return a + b;
    }

    /** Answers the server's name after {@code ms} milliseconds. */
    @Override
    public String sleep(int ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        return name;
    }

    @Override
    public void fail(String message) throws EchoError {
        throw new EchoError(message);
    }

    @Override
    public void notify(String message) {
        notified.incrementAndGet();
    }
}
