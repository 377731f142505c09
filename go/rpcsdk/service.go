package rpcsdk

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/apache/thrift/lib/go/thrift"
)

// Service serves a Thrift processor as an endpoint (SPEC §4): it listens
// on the configured front address, registers itself once listening (in
// ZooKeeper, or in the project's local registry when `zk` names no hosts;
// not with stand_alone=1), echoes the proxy's heartbeats, runs
// requests concurrently and writes each reply as soon as it is ready, in
// any order. Stop deregisters first and finishes what is in flight.
type Service struct {
	config    *Config
	processor thrift.TProcessor
	// CodeURLVersion is recorded in the registry entry.
	CodeURLVersion string

	listener net.Listener
	address  string
	reg      registrant // in ZooKeeper or the local registry

	inflight    int64 // requests read and not yet answered
	lastRequest int64 // unix nanoseconds of the last request read
	requests    int64

	mu        sync.Mutex
	conns     map[*serverConn]struct{}
	draining  bool
	connWG    sync.WaitGroup
	closing   chan struct{} // closed when the accept loop must return
	closeOnce sync.Once
	accepted  chan struct{} // closed when the accept loop has returned
	slots     chan struct{} // max_connections
}

// NewService prepares a service; nothing is bound before Start.
func NewService(config *Config, processor thrift.TProcessor) *Service {
	return &Service{
		config:    config,
		processor: processor,
		conns:     map[*serverConn]struct{}{},
		closing:   make(chan struct{}),
		accepted:  make(chan struct{}),
		slots:     make(chan struct{}, config.MaxConnections),
	}
}

// Address is the address bound (port 0 resolved); the registered frontend.
func (s *Service) Address() string { return s.address }

// Inflight is the number of requests being served right now.
func (s *Service) Inflight() int64 { return atomic.LoadInt64(&s.inflight) }

// Requests is the number of calls and oneways read since the start.
func (s *Service) Requests() int64 { return atomic.LoadInt64(&s.requests) }

// Start binds, starts serving, then registers; it returns once registered.
func (s *Service) Start() error {
	c := s.config
	if !c.StandAlone {
		if c.Service == "" {
			return &ConfigError{"`service` is not set (or set stand_alone=1)"}
		}
		// The local registry: refuse a linked product directory before
		// binding anything.
		if c.ZK == "" {
			if _, err := openLocal(c.LocalRegistry, c.Product); err != nil {
				return err
			}
		}
	}
	address, err := c.FrontAddress()
	if err != nil {
		return err
	}
	l, err := listen(address)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w", address, err)
	}
	s.listener = l
	if isUnix(address) {
		s.address = address
	} else {
		s.address = l.Addr().String()
	}
	logf(levelInfo, "service listening on %s", s.address)
	atomic.StoreInt64(&s.lastRequest, time.Now().UnixNano())
	go s.accept()

	if c.StandAlone {
		logf(levelInfo, "stand-alone: not registering")
		return nil
	}
	ep := NewEndpoint(c.Service, s.address)
	ep.CodeURLVersion = s.CodeURLVersion
	var reg registrant
	if c.ZK != "" {
		reg, err = register(c.ZK, c.ZKSessionTimeout, c.Product, ep, c.ZKAuth)
	} else {
		reg, err = registerLocal(c.LocalRegistry, c.Product, ep)
	}
	if err != nil {
		s.stopAccepting()
		return fmt.Errorf("cannot register %s at %s: %w", c.Service, s.address, err)
	}
	s.reg = reg
	return nil
}

// Run starts the service, serves until SIGTERM or SIGINT, then stops
// gracefully.
func (s *Service) Run() error {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(signals)
	if err := s.Start(); err != nil {
		return err
	}
	sig := <-signals
	logf(levelInfo, "%v received, stopping", sig)
	s.Stop()
	return nil
}

// Stop is the graceful stop: deregister first; keep serving until nothing
// is in flight and no request arrived for quiet_period (proxies stop
// sending once they see the node gone); then stop accepting and reading,
// write the replies still due and close every connection. The whole stop
// takes at most stop_timeout.
func (s *Service) Stop() {
	if s.listener == nil {
		return // never started
	}
	deadline := time.Now().Add(s.config.StopTimeout)
	if s.reg != nil {
		s.reg.deregister()
	}
	logf(levelInfo, "stopping: %d requests in flight, serving until %v without one", s.Inflight(), s.config.QuietPeriod)
	for {
		now := time.Now()
		if !now.Before(deadline) {
			logf(levelWarn, "stop timeout reached with %d requests in flight", s.Inflight())
			break
		}
		quietUntil := time.Unix(0, atomic.LoadInt64(&s.lastRequest)).Add(s.config.QuietPeriod)
		if s.Inflight() == 0 && !now.Before(quietUntil) {
			break
		}
		wake := quietUntil
		if min := now.Add(10 * time.Millisecond); wake.Before(min) {
			wake = min
		}
		if wake.After(deadline) {
			wake = deadline
		}
		time.Sleep(time.Until(wake))
	}

	s.stopAccepting()
	s.mu.Lock()
	s.draining = true
	for c := range s.conns {
		c.stopReading()
	}
	s.mu.Unlock()
	finished := make(chan struct{})
	go func() { s.connWG.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(time.Until(deadline) + 100*time.Millisecond):
		logf(levelWarn, "stop timeout reached with connections still open")
		s.mu.Lock()
		for c := range s.conns {
			c.conn.Close()
		}
		s.mu.Unlock()
	}
	if s.reg != nil {
		s.reg.close()
	}
	logf(levelInfo, "service stopped after %d requests", s.Requests())
}

// listen binds a TCP address or a Unix socket path; a stale socket file
// (nobody accepting on it) is removed first.
func listen(address string) (net.Listener, error) {
	if !isUnix(address) {
		return net.Listen("tcp", address)
	}
	if fi, err := os.Stat(address); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.DialTimeout("unix", address, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use", address)
		}
		os.Remove(address)
	}
	return net.Listen("unix", address)
}

func (s *Service) stopAccepting() {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.listener.Close()
	})
	<-s.accepted
}

func (s *Service) accept() {
	defer close(s.accepted)
	for {
		// Wait for a free connection slot (max_connections) before accepting.
		select {
		case s.slots <- struct{}{}:
		case <-s.closing:
			return
		}
		conn, err := s.listener.Accept()
		if err != nil {
			<-s.slots
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			logf(levelWarn, "accept: %v", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		c := &serverConn{svc: s, conn: conn, out: bufio.NewWriter(conn)}
		s.mu.Lock()
		if s.draining {
			s.mu.Unlock()
			conn.Close()
			<-s.slots
			continue
		}
		s.conns[c] = struct{}{}
		s.connWG.Add(1)
		s.mu.Unlock()
		go func() {
			defer func() { <-s.slots }()
			c.serve()
		}()
	}
}

// serverConn is one connection from a proxy (or any caller).
type serverConn struct {
	svc  *Service
	conn net.Conn

	wmu sync.Mutex
	out *bufio.Writer

	dmu      sync.Mutex // orders read deadline changes with stopReading
	stopping int32      // the service asked this connection to stop reading
}

func (c *serverConn) stopReading() {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	atomic.StoreInt32(&c.stopping, 1)
	c.conn.SetReadDeadline(time.Now())
}

// readDeadline sets the read deadline unless the connection is stopping
// (its deadline then stays in the past).
func (c *serverConn) readDeadline(t time.Time) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if atomic.LoadInt32(&c.stopping) == 0 {
		c.conn.SetReadDeadline(t)
	}
}

// write sends one whole frame; replies are written as they complete.
func (c *serverConn) write(f []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.out.Write(f); err == nil {
		err = c.out.Flush()
		if err != nil {
			logf(levelDebug, "write to %s: %v", c.conn.RemoteAddr(), err)
		}
	}
}

func (c *serverConn) serve() {
	s := c.svc
	cfg := s.config
	var running sync.WaitGroup
	defer func() {
		running.Wait() // every reply due is written before the close
		c.conn.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.connWG.Done()
	}()
	// Reading pauses while max_inflight requests of this connection are
	// unanswered.
	slots := make(chan struct{}, cfg.MaxInflight)
	r := bufio.NewReaderSize(c.conn, 64<<10)
	for {
		n, err := readFrameLen(r, cfg.MaxFrameSize)
		if err != nil {
			var big errFrameTooLarge
			if errors.As(err, &big) {
				logf(levelWarn, "%s: %v; closing connection", c.conn.RemoteAddr(), err)
				c.write(exceptionFrame(nil, 0, thrift.PROTOCOL_ERROR, err.Error()))
			} else if atomic.LoadInt32(&c.stopping) == 0 && !errors.Is(err, net.ErrClosed) {
				logf(levelDebug, "%s: connection ended: %v", c.conn.RemoteAddr(), err)
			}
			return
		}
		// A started frame must arrive in full within frame_timeout.
		c.readDeadline(time.Now().Add(cfg.FrameTimeout))
		payload := make([]byte, n)
		_, err = io.ReadFull(r, payload)
		c.readDeadline(time.Time{})
		if err != nil {
			logf(levelDebug, "%s: connection ended mid-frame: %v", c.conn.RemoteAddr(), err)
			return
		}
		h, err := parseHeader(payload)
		if err != nil {
			logf(levelWarn, "%s: %v; closing connection", c.conn.RemoteAddr(), err)
			c.write(exceptionFrame(nil, 0, thrift.PROTOCOL_ERROR, err.Error()))
			return
		}
		switch h.kind {
		case typeHeartbeat:
			// Echoed unchanged (SPEC §4), even while handlers run.
			c.write(frame(payload))
		case typeCall, typeOneway:
			payload, h = stripService(payload, h)
			slots <- struct{}{}
			atomic.AddInt64(&s.inflight, 1)
			atomic.AddInt64(&s.requests, 1)
			atomic.StoreInt64(&s.lastRequest, time.Now().UnixNano())
			running.Add(1)
			go func() {
				defer func() {
					atomic.AddInt64(&s.inflight, -1)
					<-slots
					running.Done()
				}()
				if reply := s.handle(payload, h); reply != nil {
					c.write(reply)
				}
			}()
		default:
			why := fmt.Sprintf("unexpected message type %d sent to a service", h.kind)
			logf(levelWarn, "%s: %s; closing connection", c.conn.RemoteAddr(), why)
			c.write(exceptionFrame(h.name, h.seqid, thrift.PROTOCOL_ERROR, why))
			return
		}
	}
}

// handle runs the processor on one request over in-memory transports and
// returns the reply frame (nil for a oneway call). A processor that writes
// nothing, or panics, is answered with INTERNAL_ERROR.
func (s *Service) handle(payload []byte, h header) (reply []byte) {
	oneway := h.kind == typeOneway
	name := append([]byte(nil), h.name...)
	defer func() {
		if p := recover(); p != nil {
			logf(levelError, "handler of %s panicked: %v", name, p)
			reply = nil
			if !oneway {
				reply = exceptionFrame(name, h.seqid, thrift.INTERNAL_ERROR, fmt.Sprintf("handler panicked: %v", p))
			}
		}
	}()
	conf := &thrift.TConfiguration{MaxMessageSize: int32(s.config.MaxFrameSize)}
	in := &thrift.TMemoryBuffer{Buffer: bytes.NewBuffer(payload)}
	out := thrift.NewTMemoryBuffer()
	ok, err := s.processor.Process(context.Background(),
		thrift.NewTBinaryProtocolConf(in, conf), thrift.NewTBinaryProtocolConf(out, conf))
	if err != nil || !ok {
		logf(levelWarn, "processing %s: %v", name, err)
	}
	if oneway {
		return nil
	}
	if out.Len() == 0 {
		why := "the processor wrote no reply"
		if err != nil {
			why = err.Error()
		}
		return exceptionFrame(name, h.seqid, thrift.INTERNAL_ERROR, why)
	}
	return frame(out.Bytes())
}
