package rpcproxy.sdk;

import java.io.IOException;
import java.io.PrintStream;
import java.util.ArrayList;
import java.util.List;
import java.util.logging.FileHandler;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.Logger;
import java.util.logging.SimpleFormatter;

import org.junit.runner.Description;
import org.junit.runner.JUnitCore;
import org.junit.runner.Request;
import org.junit.runner.notification.Failure;
import org.junit.runner.notification.RunListener;

/**
 * Runs the given test classes (or {@code Class#method}), one line per test
 * with its duration, logs to a file, and ends with the summary line
 * {@code java: N passed, M failed}. Exits non-zero when anything failed.
 */
public final class TestMain {
    public static void main(String[] args) throws Exception {
        PrintStream out = System.out;
        String logFile = System.getProperty("rpc.test.log", "java-tests.log");
        quietLogging(logFile);
        List<Request> requests = new ArrayList<>();
        for (String a : args) {
            int hash = a.indexOf('#');
            requests.add(hash < 0 ? Request.aClass(Class.forName(a))
                    : Request.method(Class.forName(a.substring(0, hash)), a.substring(hash + 1)));
        }
        int[] counts = new int[2];
        List<String> failures = new ArrayList<>();
        JUnitCore core = new JUnitCore();
        core.addListener(new RunListener() {
            private long started;
            private boolean failed;

            @Override
            public void testStarted(Description d) {
                started = System.nanoTime();
                failed = false;
            }

            @Override
            public void testFailure(Failure f) {
                failed = true;
                String[] trace = f.getTrace().split("\n");
                int keep = Math.min(trace.length, 15);
                failures.add(f.getDescription().getDisplayName() + ": "
                        + String.join("\n", java.util.Arrays.copyOf(trace, keep)));
            }

            @Override
            public void testAssumptionFailure(Failure f) {
                testFailure(f);
            }

            @Override
            public void testFinished(Description d) {
                double s = (System.nanoTime() - started) / 1e9;
                out.printf("%s %s.%s (%.1fs)%n", failed ? "FAIL" : "ok  ",
                        d.getTestClass().getSimpleName(), d.getMethodName(), s);
                counts[failed ? 1 : 0]++;
            }
        });
        for (Request r : requests) {
            core.run(r);
        }
        for (String f : failures) {
            out.println("---- " + f);
        }
        if (!failures.isEmpty()) {
            out.println("(logs: " + logFile + ")");
        }
        out.println("java: " + counts[0] + " passed, " + counts[1] + " failed");
        out.flush();
        System.exit(counts[1] == 0 && counts[0] > 0 ? 0 : 1);
    }

    /** Library and SDK logs go to a file, so the console shows only results. */
    private static void quietLogging(String file) throws IOException {
        Logger root = Logger.getLogger("");
        for (Handler h : root.getHandlers()) {
            root.removeHandler(h);
        }
        FileHandler fh = new FileHandler(file, false);
        fh.setFormatter(new SimpleFormatter());
        fh.setLevel(Level.ALL);
        root.addHandler(fh);
        root.setLevel(Level.INFO);
    }
}
