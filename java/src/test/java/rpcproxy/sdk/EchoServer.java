package rpcproxy.sdk;

import rpcproxy.echo.Echo;

/** A Java service as a user writes one: {@code EchoServer -c config.ini NAME}. Tests run it as a child process. */
public final class EchoServer {
    public static void main(String[] args) throws Exception {
        String ini = args.length > 1 && args[0].equals("-c") ? args[1] : "config.ini";
        String name = args.length > 2 ? args[2] : "java";
        RpcService.fromConfig(ini, new Echo.Processor<>(new EchoHandler(name))).run();
    }
}
