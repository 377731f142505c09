package rpcproxy.sdk;

import java.util.logging.Logger;

/** SIGTERM and SIGINT handling through the JDK's signal API (jdk.unsupported). */
final class Signals {
    private static final Logger LOG = Logger.getLogger(Signals.class.getName());

    private Signals() {
    }

    /** Runs {@code action} on each SIGTERM or SIGINT; false if the handlers could not be installed. */
    @SuppressWarnings("removal")
    static boolean onTermination(Runnable action) {
        try {
            for (String name : new String[] {"TERM", "INT"}) {
                sun.misc.Signal.handle(new sun.misc.Signal(name), s -> action.run());
            }
            return true;
        } catch (IllegalArgumentException | LinkageError e) {
            LOG.warning("cannot handle SIGTERM/SIGINT (" + e + "); relying on the JVM's shutdown");
            return false;
        }
    }
}
