import java.io.IOException;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicBoolean;

import org.apache.thrift.TException;
import org.apache.thrift.protocol.TBinaryProtocol;
import org.apache.thrift.protocol.TMultiplexedProtocol;
import org.apache.thrift.transport.TSocket;
import org.apache.thrift.transport.TTransport;
import org.apache.thrift.transport.layered.TFramedTransport;

import rpcproxy.echo.Echo;
import rpcproxy.echo.EchoError;

/**
 * A stock Java Thrift client of the mixed-fleet tests: libthrift's TSocket,
 * TFramedTransport, TBinaryProtocol and TMultiplexedProtocol with the
 * generated Echo client, no rpc_proxy SDK code.
 *
 * <pre>
 * MixedClient probe HOST:PORT svc1,svc2           one JSON line per service
 * MixedClient load HOST:PORT SERVICE CONNS MS     sleep(MS) calls until stdin closes, then a JSON summary
 * </pre>
 */
public final class MixedClient {
    private static final int TIMEOUT_MS = 15_000;

    public static void main(String[] args) throws Exception {
        if (args.length >= 3 && args[0].equals("probe")) {
            for (String s : args[2].split(",")) {
                System.out.println(probe(args[1], s));
            }
        } else if (args.length >= 5 && args[0].equals("load")) {
            load(args[1], args[2], Integer.parseInt(args[3]), Integer.parseInt(args[4]));
        } else {
            System.err.println("usage: MixedClient probe HOST:PORT svc,... | load HOST:PORT SERVICE CONNS MS");
            System.exit(2);
        }
    }

    /** A stock client for {@code service} through the proxy at {@code hostPort}. */
    static final class Conn implements AutoCloseable {
        final TTransport transport;
        final Echo.Client client;

        Conn(String hostPort, String service) throws TException {
            int colon = hostPort.lastIndexOf(':');
            TSocket socket = new TSocket(hostPort.substring(0, colon),
                    Integer.parseInt(hostPort.substring(colon + 1)), TIMEOUT_MS);
            transport = new TFramedTransport(socket);
            transport.open();
            client = new Echo.Client(new TMultiplexedProtocol(new TBinaryProtocol(transport), service));
        }

        @Override
        public void close() {
            transport.close();
        }
    }

    static String probe(String proxy, String service) {
        Map<String, Object> r = new LinkedHashMap<>();
        r.put("service", service);
        String step = "connect";
        try (Conn c = new Conn(proxy, service)) {
            step = "echo";
            r.put("echo", c.client.echo("mixed from java"));
            step = "add";
            r.put("add", c.client.add(40, 2));
            step = "echo who";
            r.put("who", c.client.echo("who"));
            step = "echo pid";
            r.put("pid", c.client.echo("pid"));
            step = "fail";
            try {
                c.client.fail("java asked");
                throw new IllegalStateException("no exception");
            } catch (EchoError e) {
                r.put("fail", "EchoError: " + e.getMessage());
            }
            r.put("error", "");
        } catch (Exception e) {
            r.put("error", step + ": " + e);
        }
        return json(r);
    }

    static void load(String proxy, String service, int conns, int ms) throws Exception {
        AtomicBoolean stop = new AtomicBoolean();
        Map<String, Integer> answers = new LinkedHashMap<>();
        List<String> errors = new ArrayList<>();
        int[] counts = new int[2]; // ok, failed
        List<Thread> threads = new ArrayList<>();
        for (int i = 0; i < conns; i++) {
            final int n = i;
            Thread t = new Thread(() -> {
                Conn c = null;
                while (!stop.get()) {
                    try {
                        if (c == null) {
                            c = new Conn(proxy, service);
                        }
                        String who = c.client.sleep(ms);
                        synchronized (counts) {
                            counts[0]++;
                            answers.merge(who, 1, Integer::sum);
                        }
                    } catch (Exception e) {
                        synchronized (counts) {
                            counts[1]++;
                            if (errors.size() < 20) {
                                errors.add("conn " + n + ": " + e);
                            }
                        }
                        if (c != null) {
                            c.close();
                            c = null;
                        }
                    }
                }
                if (c != null) {
                    c.close();
                }
            });
            t.start();
            threads.add(t);
        }
        System.out.println("loading");
        System.out.flush();
        InputStream in = System.in;
        try {
            while (in.read() >= 0) {
                // until the test closes stdin
            }
        } catch (IOException e) {
            // stdin gone: stop as well
        }
        stop.set(true);
        for (Thread t : threads) {
            t.join();
        }
        Map<String, Object> r = new LinkedHashMap<>();
        synchronized (counts) {
            r.put("ok", counts[0]);
            r.put("failed", counts[1]);
            r.put("errors", errors);
            r.put("answers", answers);
        }
        System.out.println(json(r));
    }

    /** Enough JSON for strings, numbers, lists and maps of them. */
    static String json(Object v) {
        if (v == null) {
            return "null";
        }
        if (v instanceof Number) {
            return v.toString();
        }
        if (v instanceof Map) {
            StringBuilder b = new StringBuilder("{");
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                if (b.length() > 1) {
                    b.append(',');
                }
                b.append(json(e.getKey().toString())).append(':').append(json(e.getValue()));
            }
            return b.append('}').toString();
        }
        if (v instanceof List) {
            StringBuilder b = new StringBuilder("[");
            for (Object o : (List<?>) v) {
                if (b.length() > 1) {
                    b.append(',');
                }
                b.append(json(o));
            }
            return b.append(']').toString();
        }
        StringBuilder b = new StringBuilder("\"");
        for (char ch : v.toString().toCharArray()) {
            if (ch == '"' || ch == '\\') {
                b.append('\\').append(ch);
            } else if (ch < 0x20) {
                b.append(String.format("\\u%04x", (int) ch));
            } else {
                b.append(ch);
            }
        }
        return b.append('"').toString();
    }
}
