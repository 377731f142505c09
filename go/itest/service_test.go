package itest

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/apache/thrift/lib/go/thrift"
	"github.com/samuel/go-zookeeper/zk"

	"rpcproxy/go/gen/echo"
	"rpcproxy/go/rpcsdk"
)

// The node carries the SPEC §6 record, parents are persistent and empty,
// and every kind of call works through the real proxy.
func TestCallsThroughProxy(t *testing.T) {
	s := startService(t, "echo_go", nil, "--code_url_version", "git@host:team/echo.git@1a2b3c4")
	data, stat := s.waitNode(t, 20*time.Second)
	if stat.EphemeralOwner == 0 {
		t.Errorf("%s is not ephemeral", s.nodePath())
	}
	var rec map[string]string
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatalf("node data %q: %v", data, err)
	}
	host, _ := os.Hostname()
	want := map[string]string{
		"service":          "echo_go",
		"service_id":       strings.NewReplacer(".", "_", ":", "_").Replace(s.address),
		"frontend":         s.address,
		"deploy_path":      workDir,
		"code_url_version": "git@host:team/echo.git@1a2b3c4",
		"hostname":         host,
	}
	for k, v := range want {
		if rec[k] != v {
			t.Errorf("record field %s = %q, want %q (record %s)", k, rec[k], v, data)
		}
	}
	if !regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$`).MatchString(rec["start_time"]) {
		t.Errorf("start_time %q is not YYYY-MM-DD HH:MM:SS", rec["start_time"])
	}
	for _, parent := range []string{"/zk/product/test/services", "/zk/product/test/services/echo_go"} {
		d, st, err := zkConn.Get(parent)
		if err != nil || st.EphemeralOwner != 0 || len(d) != 0 {
			t.Errorf("parent %s: data %q, owner %d, err %v; want persistent and empty", parent, d, st.EphemeralOwner, err)
		}
	}

	waitReady(t, "echo_go")
	ctx := context.Background()
	c := rpcsdk.NewProxyClient(proxyAddress, 10*time.Second)
	defer c.Close()
	e := echo.NewEchoClient(c.Client("echo_go"))
	if r, err := e.Echo(ctx, "héllo"); err != nil || r != "héllo" {
		t.Errorf("echo: %q, %v", r, err)
	}
	if r, err := e.Add(ctx, 40, 2); err != nil || r != 42 {
		t.Errorf("add: %d, %v", r, err)
	}
	var app thrift.TApplicationException
	if _, err := e.Add(ctx, 1<<62, 1<<62); !errors.As(err, &app) || app.TypeId() != thrift.INTERNAL_ERROR ||
		!strings.Contains(err.Error(), "overflows") {
		t.Errorf("add overflow: want INTERNAL_ERROR naming the overflow, got %v", err)
	}
	var declared *echo.EchoError
	if err := e.Fail(ctx, "boom"); !errors.As(err, &declared) || declared.Message != "boom" {
		t.Errorf("fail: want EchoError(boom), got %v", err)
	}
	if err := e.Notify(ctx, "note-1"); err != nil {
		t.Errorf("notify: %v", err)
	}
	notes := filepath.Join(workDir, s.proc.name+".notify")
	if !waitFor(5*time.Second, func() bool { b, _ := os.ReadFile(notes); return string(b) == "note-1\n" }) {
		t.Errorf("oneway notify did not reach the service")
	}
	// An unknown service is the proxy's UNKNOWN error; the connection stays.
	_, err := echo.NewEchoClient(c.Client("no_such_service")).Echo(ctx, "x")
	if !errors.As(err, &app) || app.TypeId() != thrift.UNKNOWN_APPLICATION_EXCEPTION {
		t.Errorf("unknown service: want UNKNOWN application exception, got %v", err)
	}
	if r, err := e.Echo(ctx, "again"); err != nil || r != "again" {
		t.Errorf("echo after errors: %q, %v", r, err)
	}
	if c.Connects != 1 {
		t.Errorf("application errors reopened the connection: %d connects", c.Connects)
	}

	// Calls run concurrently: ten 300 ms sleeps through a pool of ten
	// finish well before the 3 s they would take one after another.
	pool := rpcsdk.NewClientPool(proxyAddress, 10, 10*time.Second)
	defer pool.Close()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pid, err := echo.NewEchoClient(pool.Client("echo_go")).Sleep(ctx, 300)
			if err == nil && pid != strconv.Itoa(s.cmd.Process.Pid) {
				err = errors.New("sleep answered by pid " + pid)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent sleep: %v", err)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("10 concurrent 300 ms calls took %v: not served concurrently", d)
	}

	// Idle for twice the proxy's heartbeat timeout: only echoed heartbeats
	// keep its connection to the service alive.
	time.Sleep(2 * time.Second)
	if lost := "backend connection lost service=echo_go"; logContains(proxyProc, lost) {
		t.Errorf("the proxy lost its connection to the service:\n%s", proxyProc.logTail())
	}
	if r, err := e.Echo(ctx, "still there"); err != nil || r != "still there" {
		t.Errorf("echo after an idle pause: %q, %v", r, err)
	}
}

// stand_alone=1 serves without registering; a ProxyClient pointed at the
// service itself works too, since the service strips `service:` prefixes.
func TestStandAloneServesWithoutRegistering(t *testing.T) {
	s := startService(t, "echo_alone", map[string]string{"stand_alone": "1", "zk": ""})
	c := rpcsdk.NewProxyClient(s.address, 5*time.Second)
	defer c.Close()
	e := echo.NewEchoClient(c.Client("echo_alone"))
	var last error
	if !waitFor(10*time.Second, func() bool { _, last = e.Echo(context.Background(), "x"); return last == nil }) {
		t.Fatalf("stand-alone service not answering: %v\n%s", last, s.logTail())
	}
	if ok, _, err := zkConn.Exists("/zk/product/test/services/echo_alone"); err != nil || ok {
		t.Errorf("a stand-alone service registered (exists %v, %v)", ok, err)
	}
}

// rawConn speaks frames to the service directly, as the proxy does.
type rawConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, address string) *rawConn {
	network := "tcp"
	if !strings.Contains(address, ":") {
		network = "unix"
	}
	c, err := net.DialTimeout(network, address, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, r: bufio.NewReader(c)}
}

// message encodes a strict binary message with an optional body struct.
func message(kind thrift.TMessageType, name string, seqid int32, body thrift.TStruct) []byte {
	buf := thrift.NewTMemoryBuffer()
	p := thrift.NewTBinaryProtocolConf(buf, nil)
	ctx := context.Background()
	p.WriteMessageBegin(ctx, name, kind, seqid)
	if body != nil {
		body.Write(ctx, p)
	}
	p.WriteMessageEnd(ctx)
	out := make([]byte, 4, 4+buf.Len())
	binary.BigEndian.PutUint32(out, uint32(buf.Len()))
	return append(out, buf.Bytes()...)
}

func (r *rawConn) send(frame []byte) {
	if _, err := r.c.Write(frame); err != nil {
		r.t.Fatal(err)
	}
}

// read returns the next whole frame (length included), or nil at EOF.
func (r *rawConn) read() []byte {
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var l [4]byte
	if _, err := io.ReadFull(r.r, l[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		r.t.Fatalf("read: %v", err)
	}
	b := make([]byte, 4+binary.BigEndian.Uint32(l[:]))
	copy(b, l[:])
	if _, err := io.ReadFull(r.r, b[4:]); err != nil {
		r.t.Fatalf("read: %v", err)
	}
	return b
}

func decode(t *testing.T, frame []byte) (string, thrift.TMessageType, int32, thrift.TProtocol) {
	p := thrift.NewTBinaryProtocolConf(thrift.NewTMemoryBuffer(), nil)
	p.Transport().Write(frame[4:])
	name, kind, seqid, err := p.ReadMessageBegin(context.Background())
	if err != nil {
		t.Fatalf("decode %x: %v", frame, err)
	}
	return name, kind, seqid, p
}

// The endpoint side of SPEC §4, without the proxy: heartbeats are echoed
// unchanged even while a call is running, a `service:` prefix is stripped,
// and a message type a service never gets is a protocol error that closes
// the connection.
func TestEndpointWire(t *testing.T) {
	s := startService(t, "echo_wire", nil)
	s.waitNode(t, 20*time.Second)
	r := dialRaw(t, s.address)

	r.send(message(thrift.CALL, "echo_wire:sleep", 41, &echo.EchoSleepArgs{Ms: 500}))
	beat := message(20, "ping", 7, nil)
	r.send(beat)
	if got := r.read(); string(got) != string(beat) {
		t.Fatalf("heartbeat echo: got %x, want %x (first, before the slow reply)", got, beat)
	}
	name, kind, seqid, p := decode(t, r.read())
	res := echo.NewEchoSleepResult()
	res.Read(context.Background(), p)
	if name != "sleep" || kind != thrift.REPLY || seqid != 41 || res.GetSuccess() != strconv.Itoa(s.cmd.Process.Pid) {
		t.Fatalf("sleep reply: %s %d seqid %d %q", name, kind, seqid, res.GetSuccess())
	}

	r.send(message(thrift.REPLY, "echo", 9, nil))
	name, kind, seqid, p = decode(t, r.read())
	app := thrift.NewTApplicationException(0, "")
	app.Read(context.Background(), p)
	if kind != thrift.EXCEPTION || seqid != 9 || app.TypeId() != thrift.PROTOCOL_ERROR {
		t.Fatalf("unexpected type: got %s %d seqid %d %v", name, kind, seqid, app)
	}
	if got := r.read(); got != nil {
		t.Fatalf("connection left open after a protocol error: %x", got)
	}

	// A frame over max_frame_size, and an old non-strict header: the peer
	// is told, its connection closed, and other connections carry on.
	other := dialRaw(t, s.address)
	oldHeader := append([]byte{0, 0, 0, 13, 0, 0, 0, 4}, "echo"...)
	oldHeader = append(oldHeader, byte(thrift.CALL), 0, 0, 0, 1)
	for what, f := range map[string][]byte{
		"oversized frame":   {0x7f, 0xff, 0xff, 0xff},
		"non-strict header": oldHeader,
	} {
		bad := dialRaw(t, s.address)
		bad.send(f)
		_, kind, _, p := decode(t, bad.read())
		app.Read(context.Background(), p)
		if kind != thrift.EXCEPTION || app.TypeId() != thrift.PROTOCOL_ERROR {
			t.Errorf("%s: got message type %d, %v", what, kind, app)
		}
		if got := bad.read(); got != nil {
			t.Errorf("%s: connection left open: %x", what, got)
		}
		other.send(beat)
		if got := other.read(); string(got) != string(beat) {
			t.Errorf("after a peer's %s, another connection's heartbeat: %x", what, got)
		}
	}
}

// A Unix socket frontend (relative front_sock made absolute) is registered
// and reached through the proxy (product test), and a leftover node at the
// same path from another session is replaced.
func TestUnixSocketReplacesLeftoverNode(t *testing.T) {
	s := &service{name: "echo_unix", address: filepath.Join(workDir, "echo_unix.sock")}
	path := s.nodePath()
	if err := mkdirs(path[:strings.LastIndexByte(path, '/')]); err != nil {
		t.Fatal(err)
	}
	if _, err := zkConn.Create(path, []byte(`{"leftover":true}`), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	s = startService(t, "echo_unix", map[string]string{"front_sock": "echo_unix.sock"})
	ok := waitFor(20*time.Second, func() bool {
		d, st, err := zkConn.Get(path)
		return err == nil && st.EphemeralOwner != 0 && strings.Contains(string(d), `"frontend":"`+s.address+`"`)
	})
	if !ok {
		d, _, err := zkConn.Get(path)
		t.Fatalf("leftover node not replaced by %s's record: %q %v\n%s", s.address, d, err, s.logTail())
	}
	waitReady(t, "echo_unix")
}

func mkdirs(dir string) error {
	for i := 1; i <= len(dir); i++ {
		if i == len(dir) || dir[i] == '/' {
			_, err := zkConn.Create(dir[:i], nil, 0, zk.WorldACL(zk.PermAll))
			if err != nil && !errors.Is(err, zk.ErrNodeExists) {
				return err
			}
		}
	}
	return nil
}

// load calls sleep(ms) through the proxy from several goroutines until
// stopped, counting answers per pid and keeping every failure.
type load struct {
	mu       sync.Mutex
	answers  map[string]int
	failures []string
	stop     chan struct{}
	wg       sync.WaitGroup
}

func startLoad(service string, goroutines int, ms int32) *load {
	l := &load{answers: map[string]int{}, stop: make(chan struct{})}
	pool := rpcsdk.NewClientPool(proxyAddress, goroutines, 15*time.Second)
	for i := 0; i < goroutines; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			e := echo.NewEchoClient(pool.Client(service))
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				pid, err := e.Sleep(context.Background(), ms)
				l.mu.Lock()
				if err != nil {
					l.failures = append(l.failures, err.Error())
				} else {
					l.answers[pid]++
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *load) count(pid int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.answers[strconv.Itoa(pid)]
}

func (l *load) end() {
	close(l.stop)
	l.wg.Wait()
}

// SIGTERM under load: the stopping instance deregisters at once, finishes
// what it has in flight, exits 0, and not one call fails; the other
// instance takes the traffic.
func TestSigtermUnderLoad(t *testing.T) {
	a := startService(t, "echo_term", nil)
	b := startService(t, "echo_term", nil)
	a.waitNode(t, 20*time.Second)
	b.waitNode(t, 20*time.Second)
	waitReady(t, "echo_term")

	l := startLoad("echo_term", 8, 100)
	pa, pb := a.cmd.Process.Pid, b.cmd.Process.Pid
	if !waitFor(20*time.Second, func() bool { return l.count(pa) >= 20 && l.count(pb) >= 20 }) {
		l.end()
		t.Fatalf("load did not reach both instances: %v %v", l.answers, l.failures)
	}
	termAt := time.Now()
	a.signal(syscall.SIGTERM)
	gone := waitFor(3*time.Second, func() bool {
		ok, _, err := zkConn.Exists(a.nodePath())
		return err == nil && !ok
	})
	code := a.wait(20 * time.Second)
	stopped := time.Since(termAt)
	afterA := l.count(pb)
	more := waitFor(10*time.Second, func() bool { return l.count(pb) >= afterA+20 })
	l.end()

	if !gone {
		t.Errorf("stopping instance still registered 3 s after SIGTERM")
	}
	if code != 0 {
		t.Errorf("stopping instance exit code %d (-1: still running):\n%s", code, a.logTail())
	}
	if !logContains(a.proc, "service stopped") {
		t.Errorf("no graceful stop in the log:\n%s", a.logTail())
	}
	// With 8 callers of 100 ms calls shared by two instances, A had calls
	// in flight when it was told to stop: they must have completed.
	inflight := "none"
	if m := regexp.MustCompile(`stopping: (\d+) requests in flight`).FindStringSubmatch(readLog(a.proc)); m != nil {
		inflight = m[1]
	}
	if inflight == "none" || inflight == "0" {
		t.Errorf("A had no call in flight at SIGTERM (%s): the test proves less than it should", inflight)
	}
	if !more {
		t.Errorf("the remaining instance did not take the traffic: %v", l.answers)
	}
	if len(l.failures) > 0 {
		t.Errorf("%d calls failed, first: %s", len(l.failures), l.failures[0])
	}
	t.Logf("A answered %d (%s in flight at SIGTERM), B %d; A exited %v after SIGTERM",
		l.count(pa), inflight, l.count(pb), stopped.Round(time.Millisecond))
}

// After its ZooKeeper session expires (the process frozen past the session
// timeout), the service registers again under a new session and is
// reachable through the proxy again.
func TestSessionExpiryReregisters(t *testing.T) {
	s := startService(t, "echo_expiry", map[string]string{"zk_session_timeout": "1"})
	_, stat := s.waitNode(t, 20*time.Second)
	waitReady(t, "echo_expiry")
	old := stat.EphemeralOwner

	s.signal(syscall.SIGSTOP)
	expired := waitFor(15*time.Second, func() bool {
		ok, _, err := zkConn.Exists(s.nodePath())
		return err == nil && !ok
	})
	s.signal(syscall.SIGCONT)
	if !expired {
		t.Fatalf("the node outlived the frozen process's session")
	}
	var owner int64
	back := waitFor(15*time.Second, func() bool {
		_, st, err := zkConn.Get(s.nodePath())
		if err == nil {
			owner = st.EphemeralOwner
		}
		return err == nil && owner != old && owner != 0
	})
	if !back {
		t.Fatalf("not registered again after session expiry:\n%s", s.logTail())
	}
	if !logContains(s.proc, "session expired") {
		t.Errorf("the expiry is not in the log:\n%s", s.logTail())
	}
	waitReady(t, "echo_expiry")
}

// A ProxyClient whose proxy restarted between calls reconnects before
// sending: the call after the restart succeeds.
func TestClientReconnectsAfterProxyRestart(t *testing.T) {
	s := startService(t, "echo_reconnect", nil)
	s.waitNode(t, 20*time.Second)
	port := freePort()
	address, first, err := startProxy("proxy-restart-1", port)
	if err != nil {
		t.Fatal(err)
	}
	c := rpcsdk.NewProxyClient(address, 5*time.Second)
	defer c.Close()
	e := echo.NewEchoClient(c.Client("echo_reconnect"))
	var last error
	if !waitFor(20*time.Second, func() bool { _, last = e.Echo(context.Background(), "x"); return last == nil }) {
		t.Fatalf("first proxy: %v", last)
	}
	first.signal(syscall.SIGKILL)
	first.wait(5 * time.Second)
	if _, _, err := startProxy("proxy-restart-2", port); err != nil {
		t.Fatal(err)
	}
	connects := c.Connects
	// The new proxy routes once it has read the registry; until then it
	// answers with an application error, which must not cost a reconnect.
	if !waitFor(20*time.Second, func() bool { _, last = e.Echo(context.Background(), "y"); return last == nil }) {
		t.Fatalf("after the proxy restart: %v", last)
	}
	if c.Connects != connects+1 {
		t.Errorf("%d connections opened across one proxy restart", c.Connects-connects)
	}
}

// A bad or incomplete configuration stops the service with exit code 1 and
// a message naming what is wrong.
func TestConfigErrorsExit(t *testing.T) {
	for _, tc := range []struct {
		keys map[string]string
		want string
	}{
		{map[string]string{"front_port": "x"}, "front_port"},
		{map[string]string{"zk": "local:"}, "zk"},
	} {
		keys := map[string]string{"front_host": "127.0.0.1", "front_port": strconv.Itoa(freePort())}
		for k, v := range tc.keys {
			keys[k] = v
		}
		s := startService(t, "echo_bad", keys)
		if code := s.wait(10 * time.Second); code != 1 {
			t.Errorf("%v: exit code %d, want 1", tc.keys, code)
		}
		if !logContains(s.proc, tc.want) {
			t.Errorf("%v: log does not name %s:\n%s", tc.keys, tc.want, s.logTail())
		}
	}
}
