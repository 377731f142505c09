package rpcsdk

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/apache/thrift/lib/go/thrift"
)

// Message types (SPEC §2), the three extensions included.
const (
	typeCall        = byte(thrift.CALL)
	typeReply       = byte(thrift.REPLY)
	typeException   = byte(thrift.EXCEPTION)
	typeOneway      = byte(thrift.ONEWAY)
	typeHeartbeat   = byte(20)
	typeStop        = byte(21)
	typeStopConfirm = byte(22)
)

const strictVersion = 0x80010000

// header is the strict binary message header at the start of a payload.
type header struct {
	kind  byte
	name  []byte // a view into the payload
	seqid int32
	body  int // offset of the body in the payload
}

var errNotStrict = errors.New("non-strict (old) message header is not supported")

func parseHeader(p []byte) (header, error) {
	if len(p) < 12 {
		return header{}, fmt.Errorf("message of %d bytes is too short for a header", len(p))
	}
	v := binary.BigEndian.Uint32(p)
	if v&0xffff0000 != strictVersion {
		if v&0x80000000 != 0 {
			return header{}, fmt.Errorf("bad protocol version 0x%08x", v)
		}
		return header{}, errNotStrict
	}
	n := int(int32(binary.BigEndian.Uint32(p[4:])))
	if n < 0 || 8+n+4 > len(p) {
		return header{}, fmt.Errorf("bad method name length %d", n)
	}
	return header{
		kind:  byte(v & 0xff),
		name:  p[8 : 8+n],
		seqid: int32(binary.BigEndian.Uint32(p[8+n:])),
		body:  8 + n + 4,
	}, nil
}

// stripService removes a `service:` prefix from the name (SPEC §3): the
// proxy has already done it, a caller dialling the endpoint directly with
// a TMultiplexedProtocol has not.
func stripService(p []byte, h header) ([]byte, header) {
	i := -1
	for j, b := range h.name {
		if b == ':' {
			i = j
			break
		}
	}
	if i < 0 {
		return p, h
	}
	name := h.name[i+1:]
	out := make([]byte, 0, len(p)-i-1)
	out = binary.BigEndian.AppendUint32(out, strictVersion|uint32(h.kind))
	out = binary.BigEndian.AppendUint32(out, uint32(len(name)))
	out = append(out, name...)
	out = append(out, p[8+len(h.name):]...)
	nh := h
	nh.name = out[8 : 8+len(name)]
	nh.body = 8 + len(name) + 4
	return out, nh
}

// errFrameTooLarge reports a length outside 0..max (SPEC §2).
type errFrameTooLarge struct{ n, max int64 }

func (e errFrameTooLarge) Error() string {
	return fmt.Sprintf("frame length %d outside 0..%d", e.n, e.max)
}

// readFrameLen reads a frame's 4-byte length prefix.
func readFrameLen(r *bufio.Reader, max int) (int, error) {
	var l [4]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return 0, err
	}
	n := int64(int32(binary.BigEndian.Uint32(l[:])))
	if n < 0 || n > int64(max) {
		return 0, errFrameTooLarge{n, int64(max)}
	}
	return int(n), nil
}

// frame prefixes a payload with its length.
func frame(payload []byte) []byte {
	out := make([]byte, 4, 4+len(payload))
	binary.BigEndian.PutUint32(out, uint32(len(payload)))
	return append(out, payload...)
}

// exceptionFrame is a whole EXCEPTION frame carrying a
// TApplicationException (SPEC §2).
func exceptionFrame(name []byte, seqid int32, kind int32, message string) []byte {
	buf := thrift.NewTMemoryBuffer()
	p := thrift.NewTBinaryProtocolConf(buf, nil)
	ctx := context.Background()
	_ = p.WriteMessageBegin(ctx, string(name), thrift.EXCEPTION, seqid)
	_ = thrift.NewTApplicationException(kind, message).Write(ctx, p)
	_ = p.WriteMessageEnd(ctx)
	_ = p.Flush(ctx)
	return frame(buf.Bytes())
}
