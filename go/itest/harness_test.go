// Package itest runs the Go SDK against the real components: a throwaway
// ZooKeeper, the real rpc-proxy (from $RPC_BIN_DIR, default target/debug)
// and the example service built from this module, all on loopback.
package itest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/samuel/go-zookeeper/zk"

	"rpcproxy/go/gen/echo"
	"rpcproxy/go/rpcsdk"
)

// The stack every test shares; each test starts its own services.
var (
	workDir      string // temporary, removed at the end
	zkHosts      string
	proxyAddress string
	proxyProc    *proc
	proxyBin     string
	serviceBin   string
	zkConn       *zk.Conn // the tests' own look at the registry
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	if workDir, err = os.MkdirTemp("", "rpc-go-itest-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(workDir)
	// A service or proxy left on the default local registry (`zk` unset)
	// uses the run's own, never the machine's shared one.
	os.Setenv("RPC_REGISTRY_DIR", filepath.Join(workDir, "default-registry"))
	defer stopAll()
	if err := setUp(); err != nil {
		fmt.Fprintf(os.Stderr, "itest: %v\n", err)
		for _, p := range started {
			fmt.Fprintf(os.Stderr, "--- %s\n%s\n", p.name, p.logTail())
		}
		return 1
	}
	return m.Run()
}

func setUp() error {
	binDir := os.Getenv("RPC_BIN_DIR")
	if binDir == "" {
		binDir = filepath.Join("..", "..", "target", "debug")
	}
	proxyBin, _ = filepath.Abs(filepath.Join(binDir, "rpc-proxy"))
	if fi, err := os.Stat(proxyBin); err != nil || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s not found: build it (cargo build -p rpc-proxy) or set RPC_BIN_DIR", proxyBin)
	}
	// The example service, built with the flags this test runs under
	// (GOFLAGS from the environment, e.g. -mod=vendor).
	serviceBin = filepath.Join(workDir, "echo-service")
	build := exec.Command("go", "build", "-o", serviceBin, "rpcproxy/go/examples/echo-service")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build echo-service: %v\n%s", err, out)
	}
	if err := startZooKeeper(); err != nil {
		return err
	}
	var err error
	zkConn, _, err = zk.Connect([]string{zkHosts}, 10*time.Second, zk.WithLogger(quiet{}))
	if err != nil {
		return err
	}
	proxyAddress, proxyProc, err = startProxy("proxy", freePort())
	return err
}

type quiet struct{}

func (quiet) Printf(string, ...interface{}) {}

// proc is a child process with its output in a log file. Children die
// with the test binary (Pdeathsig), so an aborted run leaves nothing.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

var (
	startedMu sync.Mutex
	started   []*proc
)

func startProc(name string, dir string, env []string, argv ...string) (*proc, error) {
	p := &proc{name: name, log: filepath.Join(workDir, name+".log"), done: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Dir = dir
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	go func() {
		p.err = p.cmd.Wait()
		f.Close()
		close(p.done)
	}()
	startedMu.Lock()
	started = append(started, p)
	startedMu.Unlock()
	return p, nil
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *proc) signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

// wait is the exit code, or -1 if the process is still running after timeout.
func (p *proc) wait(timeout time.Duration) int {
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		return -1
	}
}

func (p *proc) kill() {
	if p.alive() {
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func stopAll() {
	if zkConn != nil {
		zkConn.Close()
	}
	startedMu.Lock()
	defer startedMu.Unlock()
	for i := len(started) - 1; i >= 0; i-- {
		started[i].kill()
	}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func writeINI(name string, keys map[string]string) string {
	var b strings.Builder
	for k, v := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, v)
	}
	path := filepath.Join(workDir, name+".ini")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		panic(err)
	}
	return path
}

// waitFor polls cond every 20 ms until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	end := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func startZooKeeper() error {
	var err error
	zkHosts, _, err = newZooKeeper("zookeeper")
	return err
}

// newZooKeeper starts a ZooKeeper of its own (data under workDir/name)
// and returns its address. A start that does not serve a session in time
// (seen rarely on a loaded machine: it answers ruok, then no session) is
// stopped and tried again on a fresh port and data directory.
func newZooKeeper(name string) (string, *proc, error) {
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		var hosts string
		var p *proc
		hosts, p, err = startZooKeeperOnce(fmt.Sprintf("%s-%d", name, attempt))
		if err == nil {
			return hosts, p, nil
		}
		if p != nil {
			p.kill()
		}
		fmt.Fprintf(os.Stderr, "itest: ZooKeeper start %d of 3 failed: %v\n", attempt, err)
	}
	return "", nil, err
}

func startZooKeeperOnce(name string) (string, *proc, error) {
	port := freePort()
	data := filepath.Join(workDir, name+"-data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return "", nil, err
	}
	// tickTime 200 ms lets sessions be as short as 400 ms (expiry test).
	cfg := filepath.Join(workDir, name+".cfg")
	text := fmt.Sprintf("tickTime=200\ndataDir=%s\nclientPort=%d\nclientPortAddress=127.0.0.1\nmaxClientCnxns=200\n", data, port)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		return "", nil, err
	}
	p, err := startProc(name, workDir, nil, "java", "-Xmx256m",
		"-cp", "/usr/share/java/zookeeper.jar:/etc/zookeeper/conf",
		"-Dzookeeper.admin.enableServer=false", "-Dzookeeper.4lw.commands.whitelist=ruok",
		"org.apache.zookeeper.server.ZooKeeperServerMain", cfg)
	if err != nil {
		return "", nil, fmt.Errorf("start ZooKeeper: %v", err)
	}
	hosts := fmt.Sprintf("127.0.0.1:%d", port)
	ok := waitFor(60*time.Second, func() bool { return ruok(hosts) || !p.alive() })
	if !ok || !p.alive() {
		return "", p, fmt.Errorf("ZooKeeper did not start:\n%s", p.logTail())
	}
	// It may answer ruok before it serves sessions: wait for a request,
	// each try on a new client (one whose handshake stalled waits long).
	if !waitFor(20*time.Second, func() bool { return servesRequest(hosts) }) {
		return "", p, fmt.Errorf("ZooKeeper at %s serves no request:\n%s", hosts, p.logTail())
	}
	return hosts, p, nil
}

// servesRequest reports whether a new client gets an answer to one
// request within two seconds.
func servesRequest(hosts string) bool {
	c, _, err := zk.Connect([]string{hosts}, 2*time.Second, zk.WithLogger(quiet{}))
	if err != nil {
		return false
	}
	defer c.Close()
	done := make(chan error, 1)
	go func() { _, _, err := c.Exists("/"); done <- err }()
	select {
	case err := <-done:
		return err == nil
	case <-time.After(2 * time.Second):
		return false
	}
}

func ruok(hosts string) bool {
	c, err := net.DialTimeout("tcp", hosts, 500*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("ruok")); err != nil {
		return false
	}
	buf := make([]byte, 4)
	n, _ := c.Read(buf)
	return string(buf[:n]) == "imok"
}

// startProxy starts rpc-proxy on port and returns its address.
func startProxy(name string, port int) (string, *proc, error) {
	address := fmt.Sprintf("127.0.0.1:%d", port)
	// Round-robin, so that both instances of a service get calls (the
	// SIGTERM test stops one while it has some in flight). Heartbeats
	// every 200 ms, a connection silent for 1 s is dead: an endpoint that
	// did not echo them would be dropped within the tests' idle pauses.
	ini := writeINI(name, map[string]string{
		"zk": zkHosts, "product": "test", "proxy_address": address, "rpc_timeout": "10",
		"balance": "round_robin", "heartbeat_interval_ms": "200", "heartbeat_timeout_ms": "1000",
	})
	p, err := startProc(name, workDir, nil, proxyBin, "-c", ini)
	if err != nil {
		return "", nil, err
	}
	if !waitFor(20*time.Second, func() bool { return portOpen(address) || !p.alive() }) || !p.alive() {
		return "", nil, fmt.Errorf("%s did not start:\n%s", name, p.logTail())
	}
	return address, p, nil
}

func portOpen(address string) bool {
	c, err := net.DialTimeout("tcp", address, 200*time.Millisecond)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// service is one echo-service process.
type service struct {
	*proc
	name    string
	address string // the frontend it registers
	ini     string
}

// startService runs the example service under name with the given extra
// config keys; TCP on a free port unless keys set front_sock.
func startService(t *testing.T, name string, keys map[string]string, args ...string) *service {
	t.Helper()
	all := map[string]string{"zk": zkHosts, "product": "test", "service": name, "quiet_period": "1"}
	for k, v := range keys {
		all[k] = v
	}
	address := ""
	if sock, ok := all["front_sock"]; ok {
		address = filepath.Join(workDir, sock)
	} else {
		if _, ok := all["front_port"]; !ok {
			all["front_host"], all["front_port"] = "127.0.0.1", strconv.Itoa(freePort())
		}
		address = all["front_host"] + ":" + all["front_port"]
	}
	procName := fmt.Sprintf("%s-%d", name, len(started))
	ini := writeINI(procName, all)
	argv := append([]string{serviceBin, "-c", ini}, args...)
	p, err := startProc(procName, workDir, []string{"ECHO_NOTIFY_FILE=" + filepath.Join(workDir, procName+".notify")}, argv...)
	if err != nil {
		t.Fatal(err)
	}
	s := &service{proc: p, name: name, address: address, ini: ini}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- %s log:\n%s", p.name, p.logTail())
		}
	})
	return s
}

// nodePath is where s registers (SPEC §6).
func (s *service) nodePath() string {
	return "/zk/product/test/services/" + s.name + "/" + rpcsdk.ServiceID(s.address)
}

// waitNode waits until s's node exists and returns its data and stat.
func (s *service) waitNode(t *testing.T, timeout time.Duration) ([]byte, *zk.Stat) {
	t.Helper()
	var data []byte
	var stat *zk.Stat
	ok := waitFor(timeout, func() bool {
		d, st, err := zkConn.Get(s.nodePath())
		data, stat = d, st
		return err == nil || !s.alive()
	})
	if !ok || !s.alive() {
		t.Fatalf("%s not registered at %s within %v:\n%s", s.name, s.nodePath(), timeout, s.logTail())
	}
	return data, stat
}

// waitReady waits until a call to service through the proxy succeeds.
func waitReady(t *testing.T, service string) {
	t.Helper()
	c := rpcsdk.NewProxyClient(proxyAddress, 5*time.Second)
	defer c.Close()
	e := echo.NewEchoClient(c.Client(service))
	var last error
	ok := waitFor(20*time.Second, func() bool {
		r, err := e.Echo(context.Background(), "ready")
		last = err
		return err == nil && r == "ready"
	})
	if !ok {
		t.Fatalf("%s not reachable through the proxy: %v", service, last)
	}
}

func readLog(p *proc) string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

func logContains(p *proc, text string) bool {
	return strings.Contains(readLog(p), text)
}
