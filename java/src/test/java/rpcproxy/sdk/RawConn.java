package rpcproxy.sdk;

import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.Socket;

import org.apache.thrift.TApplicationException;
import org.apache.thrift.TBase;
import org.apache.thrift.TException;
import org.apache.thrift.protocol.TBinaryProtocol;
import org.apache.thrift.protocol.TMessage;
import org.apache.thrift.transport.TMemoryBuffer;
import org.apache.thrift.transport.TMemoryInputTransport;

/** A bare TCP connection speaking SPEC §2 frames, to look at a service's answers byte by byte. */
final class RawConn implements AutoCloseable {
    final Socket socket;
    final DataInputStream in;
    final DataOutputStream out;

    RawConn(Address a) throws IOException {
        socket = new Socket(a.host(), a.port());
        socket.setSoTimeout(10_000);
        in = new DataInputStream(socket.getInputStream());
        out = new DataOutputStream(socket.getOutputStream());
    }

    /** A whole frame: the message {@code (name, type, seqid)} with {@code body} as its struct. */
    static byte[] frame(String name, byte type, int seqid, TBase<?, ?> body) throws TException {
        TMemoryBuffer buf = new TMemoryBuffer(64);
        TBinaryProtocol p = new TBinaryProtocol(buf);
        p.writeMessageBegin(new TMessage(name, type, seqid));
        if (body != null) {
            body.write(p);
        }
        p.writeMessageEnd();
        byte[] payload = buf.getArray();
        int n = buf.length();
        byte[] f = new byte[n + 4];
        f[0] = (byte) (n >>> 24);
        f[1] = (byte) (n >>> 16);
        f[2] = (byte) (n >>> 8);
        f[3] = (byte) n;
        System.arraycopy(payload, 0, f, 4, n);
        return f;
    }

    void send(byte[] frame) throws IOException {
        out.write(frame);
        out.flush();
    }

    /** The next frame's payload (no length prefix). */
    byte[] read() throws IOException {
        int n = in.readInt();
        byte[] b = new byte[n];
        in.readFully(b);
        return b;
    }

    /** True if the peer closed the connection (after any frames still to read are skipped). */
    boolean closedByPeer() {
        try {
            while (true) {
                read();
            }
        } catch (EOFException e) {
            return true;
        } catch (IOException e) {
            return e.getMessage() != null && e.getMessage().contains("reset");
        }
    }

    /** Reads a reply: its header, and the body into {@code result} (or the exception it carries). */
    static TMessage decode(byte[] payload, TBase<?, ?> result) throws TException {
        TBinaryProtocol p = new TBinaryProtocol(new TMemoryInputTransport(payload));
        TMessage m = p.readMessageBegin();
        if (m.type == Wire.EXCEPTION) {
            throw TApplicationException.readFrom(p);
        }
        result.read(p);
        return m;
    }

    static TApplicationException exception(byte[] payload) throws TException {
        TBinaryProtocol p = new TBinaryProtocol(new TMemoryInputTransport(payload));
        TMessage m = p.readMessageBegin();
        if (m.type != Wire.EXCEPTION) {
            throw new AssertionError("expected an exception, got type " + m.type);
        }
        return TApplicationException.readFrom(p);
    }

    @Override
    public void close() throws IOException {
        socket.close();
    }
}
