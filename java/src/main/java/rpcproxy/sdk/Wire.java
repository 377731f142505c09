package rpcproxy.sdk;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;

/** SPEC §2: frame and message header constants, header parsing and the SDK's own error replies. */
public final class Wire {
    private Wire() {
    }

    public static final byte CALL = 1;
    public static final byte REPLY = 2;
    public static final byte EXCEPTION = 3;
    public static final byte ONEWAY = 4;
    public static final byte HEARTBEAT = 20;
    public static final byte STOP = 21;
    public static final byte STOP_CONFIRM = 22;

    /** TApplicationException types the SDK sends. */
    public static final int UNKNOWN = 0;
    public static final int UNKNOWN_METHOD = 1;
    public static final int INTERNAL_ERROR = 6;
    public static final int PROTOCOL_ERROR = 7;

    public static final int DEFAULT_MAX_FRAME_SIZE = 16_384_000;

    private static final int VERSION_1 = 0x80010000;
    private static final int VERSION_MASK = 0xffff0000;

    /** The header of a message in the strict binary form. */
    public static final class Header {
        public final byte type;
        public final String name;
        public final int seqid;

        Header(byte type, String name, int seqid) {
            this.type = type;
            this.name = name;
            this.seqid = seqid;
        }

        /** The name without a {@code service:} prefix. */
        public String bareName() {
            int colon = name.indexOf(':');
            return colon < 0 ? name : name.substring(colon + 1);
        }
    }

    /** Thrown for a message whose header cannot be used. */
    public static final class BadMessage extends Exception {
        private static final long serialVersionUID = 1L;

        BadMessage(String message) {
            super(message);
        }
    }

    /** The header of {@code payload} (a frame without its length prefix). */
    public static Header header(byte[] payload) throws BadMessage {
        ByteBuffer b = ByteBuffer.wrap(payload);
        if (b.remaining() < 4) {
            throw new BadMessage("message of " + payload.length + " bytes is too short for a header");
        }
        int word = b.getInt();
        if ((word & VERSION_MASK) != VERSION_1) {
            throw new BadMessage(word >= 0
                    ? "non-strict (old) message headers are not supported"
                    : String.format("bad protocol version 0x%08x", word & VERSION_MASK));
        }
        if (b.remaining() < 4) {
            throw new BadMessage("truncated message header");
        }
        int nameLen = b.getInt();
        if (nameLen < 0 || b.remaining() < nameLen + 4L) {
            throw new BadMessage("truncated message header");
        }
        String name = new String(payload, b.position(), nameLen, StandardCharsets.UTF_8);
        b.position(b.position() + nameLen);
        return new Header((byte) (word & 0xff), name, b.getInt());
    }

    /** A whole frame (length prefix included) carrying a {@code TApplicationException}. */
    public static byte[] applicationException(String name, int seqid, int type, String message) {
        byte[] n = name.getBytes(StandardCharsets.UTF_8);
        byte[] m = message.getBytes(StandardCharsets.UTF_8);
        int payload = 4 + 4 + n.length + 4 // header
                + 3 + 4 + m.length // 1: string message
                + 3 + 4 // 2: i32 type
                + 1; // stop
        ByteBuffer b = ByteBuffer.allocate(4 + payload);
        b.putInt(payload);
        b.putInt(VERSION_1 | EXCEPTION).putInt(n.length).put(n).putInt(seqid);
        b.put((byte) 11).putShort((short) 1).putInt(m.length).put(m);
        b.put((byte) 8).putShort((short) 2).putInt(type);
        b.put((byte) 0);
        return b.array();
    }
}
