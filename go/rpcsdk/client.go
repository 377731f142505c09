package rpcsdk

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/apache/thrift/lib/go/thrift"
)

// DefaultProxyAddress is where the local proxy listens unless told.
const DefaultProxyAddress = "127.0.0.1:5550"

// ProxyClient is one connection to the local proxy (SPEC §3): framed
// transport, strict binary protocol, method names `service:method` as a
// TMultiplexedProtocol writes them. Any generated client works on it:
//
//	c := rpcsdk.NewProxyClient("127.0.0.1:5550", 5*time.Second)
//	defer c.Close()
//	e := echo.NewEchoClient(c.Client("echo"))
//	s, err := e.Echo(ctx, "hi")
//
// It reconnects between calls: before a request is written, a connection
// the proxy closed meanwhile is replaced, and a request is resent only when
// it provably did not reach the old connection, so no call runs twice. A
// failure while a reply is awaited (timeout, reset) closes the connection
// and returns the error; the next call reconnects. Application errors
// (TApplicationException from the proxy or the service, declared
// exceptions) leave the connection usable. One call at a time: use a
// ClientPool across goroutines.
type ProxyClient struct {
	Address        string
	Timeout        time.Duration // per call, unless the context's deadline is sooner
	ConnectTimeout time.Duration
	MaxFrameSize   int

	conn  net.Conn
	r     *bufio.Reader
	seqid int32
	// Connects counts the connections opened so far.
	Connects int
}

// NewProxyClient prepares a client; it connects on the first call.
func NewProxyClient(address string, timeout time.Duration) *ProxyClient {
	return &ProxyClient{
		Address:        address,
		Timeout:        timeout,
		ConnectTimeout: 5 * time.Second,
		MaxFrameSize:   16_384_000,
	}
}

// Client is the thrift.TClient for service, to hand to a generated
// constructor: echo.NewEchoClient(c.Client("echo")).
func (c *ProxyClient) Client(service string) thrift.TClient {
	return serviceClient{call: c.Call, service: service}
}

// Close closes the connection (a later call opens a new one).
func (c *ProxyClient) Close() error {
	conn := c.conn
	c.conn, c.r = nil, nil
	if conn != nil {
		return conn.Close()
	}
	return nil
}

type serviceClient struct {
	call    func(ctx context.Context, service, method string, args, result thrift.TStruct) error
	service string
}

func (s serviceClient) Call(ctx context.Context, method string, args, result thrift.TStruct) (thrift.ResponseMeta, error) {
	return thrift.ResponseMeta{}, s.call(ctx, s.service, method, args, result)
}

func dial(address string, timeout time.Duration) (net.Conn, error) {
	network := "tcp"
	if isUnix(address) {
		network = "unix"
	}
	return net.DialTimeout(network, address, timeout)
}

func (c *ProxyClient) open() error {
	if c.conn != nil {
		return nil
	}
	conn, err := dial(c.Address, c.ConnectTimeout)
	if err != nil {
		return thrift.NewTTransportException(thrift.NOT_OPEN, fmt.Sprintf("cannot connect to proxy at %s: %v", c.Address, err))
	}
	c.conn, c.r = conn, bufio.NewReader(conn)
	c.Connects++
	return nil
}

// healthy tells whether an idle connection is still open: nothing may be
// readable on it (no reply is owed) and it must not be at EOF.
func (c *ProxyClient) healthy() bool {
	if c.r.Buffered() > 0 {
		return false
	}
	c.conn.SetReadDeadline(time.Now())
	_, err := c.r.Peek(1)
	c.conn.SetReadDeadline(time.Time{})
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Call makes one call of service.method; a nil result makes it oneway.
func (c *ProxyClient) Call(ctx context.Context, service, method string, args, result thrift.TStruct) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.seqid++
	seqid := c.seqid
	kind := thrift.CALL
	if result == nil {
		kind = thrift.ONEWAY
	}
	buf := thrift.NewTMemoryBuffer()
	out := thrift.NewTBinaryProtocolConf(buf, nil)
	if err := out.WriteMessageBegin(ctx, service+":"+method, kind, seqid); err != nil {
		return err
	}
	if err := args.Write(ctx, out); err != nil {
		return err
	}
	if err := out.WriteMessageEnd(ctx); err != nil {
		return err
	}
	if buf.Len() > c.MaxFrameSize {
		return thrift.NewTTransportException(thrift.UNKNOWN_TRANSPORT_EXCEPTION,
			fmt.Sprintf("request of %d bytes exceeds max_frame_size %d", buf.Len(), c.MaxFrameSize))
	}
	request := frame(buf.Bytes())

	deadline := time.Now().Add(c.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if c.conn != nil && !c.healthy() {
		c.Close()
	}
	fresh := c.conn == nil
	if err := c.open(); err != nil {
		return err
	}
	if err := c.send(request, deadline); err != nil {
		c.Close()
		// A failed write on a connection that was idle left the proxy
		// without a complete frame: one resend on a new connection is safe.
		if fresh {
			return err
		}
		if err := c.open(); err != nil {
			return err
		}
		if err := c.send(request, deadline); err != nil {
			c.Close()
			return err
		}
	}
	if result == nil {
		return nil
	}
	err := c.receive(ctx, method, seqid, result, deadline)
	var app thrift.TApplicationException
	if err != nil && !errors.As(err, &app) {
		c.Close()
	}
	return err
}

func (c *ProxyClient) send(request []byte, deadline time.Time) error {
	c.conn.SetWriteDeadline(deadline)
	_, err := c.conn.Write(request)
	c.conn.SetWriteDeadline(time.Time{})
	if err != nil {
		return thrift.NewTTransportException(thrift.UNKNOWN_TRANSPORT_EXCEPTION, fmt.Sprintf("sending to proxy: %v", err))
	}
	return nil
}

func (c *ProxyClient) receive(ctx context.Context, method string, seqid int32, result thrift.TStruct, deadline time.Time) error {
	c.conn.SetReadDeadline(deadline)
	defer c.conn.SetReadDeadline(time.Time{})
	n, err := readFrameLen(c.r, c.MaxFrameSize)
	if err == nil {
		payload := make([]byte, n)
		if _, err = io.ReadFull(c.r, payload); err == nil {
			return decodeReply(ctx, payload, method, seqid, result)
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return thrift.NewTTransportException(thrift.TIMED_OUT, fmt.Sprintf("no reply to %s from proxy at %s in time", method, c.Address))
	}
	return thrift.NewTTransportException(thrift.UNKNOWN_TRANSPORT_EXCEPTION, fmt.Sprintf("reading reply to %s from proxy: %v", method, err))
}

func decodeReply(ctx context.Context, payload []byte, method string, seqid int32, result thrift.TStruct) error {
	in := thrift.NewTBinaryProtocolConf(&thrift.TMemoryBuffer{Buffer: bytes.NewBuffer(payload)}, nil)
	name, kind, rseq, err := in.ReadMessageBegin(ctx)
	if err != nil {
		return err
	}
	if rseq != seqid {
		return thrift.NewTProtocolExceptionWithType(thrift.BAD_SEQUENCE_ID,
			fmt.Errorf("reply to %s has seqid %d, expected %d", method, rseq, seqid))
	}
	switch kind {
	case thrift.EXCEPTION:
		app := thrift.NewTApplicationException(thrift.UNKNOWN_APPLICATION_EXCEPTION, "")
		if err := app.Read(ctx, in); err != nil {
			return err
		}
		return app
	case thrift.REPLY:
	default:
		return thrift.NewTProtocolExceptionWithType(thrift.INVALID_DATA,
			fmt.Errorf("reply to %s has message type %d", method, kind))
	}
	if name != method {
		return thrift.NewTProtocolExceptionWithType(thrift.INVALID_DATA,
			fmt.Errorf("reply to %s is named %q", method, name))
	}
	if err := result.Read(ctx, in); err != nil {
		return err
	}
	return in.ReadMessageEnd(ctx)
}

// ErrPoolTimeout is returned when no pooled connection became free in time.
var ErrPoolTimeout = errors.New("no free proxy connection in time")

// ClientPool is a goroutine-safe, bounded pool of ProxyClients: at most
// size connections exist; a caller waits up to AcquireTimeout for one. A
// connection whose call failed other than with an application error is
// closed, and the next call on that slot dials a new one.
type ClientPool struct {
	Address        string
	Timeout        time.Duration
	AcquireTimeout time.Duration

	slots  chan struct{}
	mu     sync.Mutex
	idle   []*ProxyClient
	closed bool
}

// NewClientPool makes a pool of up to size connections to the proxy.
func NewClientPool(address string, size int, timeout time.Duration) *ClientPool {
	if size < 1 {
		size = 1
	}
	return &ClientPool{
		Address:        address,
		Timeout:        timeout,
		AcquireTimeout: timeout,
		slots:          make(chan struct{}, size),
	}
}

// Client is a goroutine-safe thrift.TClient for service: each call borrows
// a pooled connection. Generated clients keep per-call metadata, so make
// one per goroutine: echo.NewEchoClient(pool.Client("echo")).
func (p *ClientPool) Client(service string) thrift.TClient {
	return serviceClient{call: p.Call, service: service}
}

// Call makes one call on a pooled connection.
func (p *ClientPool) Call(ctx context.Context, service, method string, args, result thrift.TStruct) error {
	c, err := p.get(ctx)
	if err != nil {
		return err
	}
	err = c.Call(ctx, service, method, args, result)
	p.put(c)
	return err
}

func (p *ClientPool) get(ctx context.Context) (*ProxyClient, error) {
	timer := time.NewTimer(p.AcquireTimeout)
	defer timer.Stop()
	select {
	case p.slots <- struct{}{}:
	case <-timer.C:
		return nil, ErrPoolTimeout
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		<-p.slots
		return nil, thrift.NewTTransportException(thrift.NOT_OPEN, "pool is closed")
	}
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		return c, nil
	}
	return NewProxyClient(p.Address, p.Timeout), nil
}

// put returns a connection; one a failure closed stays closed and is
// reopened by its next call, a fresh dial.
func (p *ClientPool) put(c *ProxyClient) {
	p.mu.Lock()
	if p.closed {
		c.Close()
	} else {
		p.idle = append(p.idle, c)
	}
	p.mu.Unlock()
	<-p.slots
}

// Close closes the idle connections; those in use close when returned.
func (p *ClientPool) Close() {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	p.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
}
