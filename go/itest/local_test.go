package itest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"rpcproxy/go/gen/echo"
	"rpcproxy/go/rpcsdk"
)

// The project's embedded registry (`zk = local:DIR`): no ZooKeeper, the
// real rpc-proxy reading the same directory as the Go service.

// startLocalProxy starts rpc-proxy on the local registry dir.
func startLocalProxy(t *testing.T, name, dir string) string {
	t.Helper()
	address := fmt.Sprintf("127.0.0.1:%d", freePort())
	ini := writeINI(name, map[string]string{
		"zk": "local:" + dir, "product": "test", "proxy_address": address, "rpc_timeout": "10",
		"heartbeat_interval_ms": "200", "heartbeat_timeout_ms": "1000",
	})
	p, err := startProc(name, workDir, nil, proxyBin, "-c", ini)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- %s log:\n%s", p.name, p.logTail())
		}
	})
	if !waitFor(20*time.Second, func() bool { return portOpen(address) || !p.alive() }) || !p.alive() {
		t.Fatalf("%s did not start:\n%s", name, p.logTail())
	}
	return address
}

// localFile is where s registers in the local registry dir.
func (s *service) localFile(dir string) string {
	return filepath.Join(dir, "test", "services", s.name, rpcsdk.ServiceID(s.address)+".json")
}

// waitLocalFile waits until s's file exists and returns its record.
func (s *service) waitLocalFile(t *testing.T, dir string, timeout time.Duration) map[string]interface{} {
	t.Helper()
	var data []byte
	ok := waitFor(timeout, func() bool {
		var err error
		data, err = os.ReadFile(s.localFile(dir))
		return err == nil || !s.alive()
	})
	if !ok || !s.alive() {
		t.Fatalf("%s not registered at %s within %v:\n%s", s.name, s.localFile(dir), timeout, s.logTail())
	}
	rec := map[string]interface{}{}
	d := json.NewDecoder(strings.NewReader(string(data)))
	d.UseNumber()
	if err := d.Decode(&rec); err != nil {
		t.Fatalf("%s: %q: %v", s.localFile(dir), data, err)
	}
	return rec
}

// callEcho calls service through the proxy at address.
func callEcho(address, service, msg string) (string, error) {
	c := rpcsdk.NewProxyClient(address, 5*time.Second)
	defer c.Close()
	return echo.NewEchoClient(c.Client(service)).Echo(context.Background(), msg)
}

// waitRouted waits until a call to service through the proxy at address
// succeeds.
func waitRouted(t *testing.T, address, service string) {
	t.Helper()
	var last error
	if !waitFor(20*time.Second, func() bool {
		r, err := callEcho(address, service, "ready")
		last = err
		return err == nil && r == "ready"
	}) {
		t.Fatalf("%s not reachable through the proxy at %s: %v", service, address, last)
	}
}

// waitUnrouted waits until the proxy at address answers a call to service
// with an application exception (it knows no endpoint of it).
func waitUnrouted(t *testing.T, address, service string, timeout time.Duration) {
	t.Helper()
	var last error
	if !waitFor(timeout, func() bool {
		_, err := callEcho(address, service, "x")
		last = err
		var app thrift.TApplicationException
		return errors.As(err, &app)
	}) {
		t.Fatalf("the proxy still routes to %s after %v: %v", service, timeout, last)
	}
}

// procStart is field 22 of /proc/{pid}/stat.
func procStart(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])[19]
}

func keysOf(m map[string]interface{}) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// A Go service on a local registry is routed to by the real proxy; its
// file has the Rust record's fields and owner; a file removed by hand is
// put back within about a second; SIGTERM removes it first, and the proxy
// stops routing to the service.
func TestLocalRegistry(t *testing.T) {
	dir := filepath.Join(workDir, "local-registry")
	proxy := startLocalProxy(t, "local-proxy", dir)
	s := startService(t, "echo_local", map[string]string{"zk": "local:" + dir, "quiet_period": "2"})
	rec := s.waitLocalFile(t, dir, 20*time.Second)
	host, _ := os.Hostname()
	pid := s.cmd.Process.Pid
	want := map[string]string{
		"service":     "echo_local",
		"service_id":  rpcsdk.ServiceID(s.address),
		"frontend":    s.address,
		"deploy_path": workDir,
		"hostname":    host,
		"product":     "test",
		"pid":         strconv.Itoa(pid),
		"pid_start":   procStart(t, pid),
	}
	for k, v := range want {
		if fmt.Sprint(rec[k]) != v {
			t.Errorf("record field %s = %v, want %s (record %v)", k, rec[k], v, rec)
		}
	}
	token, ok := rec["token"].(json.Number)
	if _, err := strconv.ParseUint(string(token), 10, 64); !ok || err != nil {
		t.Errorf("token %v is not a u64", rec["token"])
	}
	wantKeys := []string{"code_url_version", "deploy_path", "frontend", "hostname", "pid", "pid_start",
		"product", "service", "service_id", "start_time", "token"}
	if got := keysOf(rec); strings.Join(got, ",") != strings.Join(wantKeys, ",") {
		t.Errorf("record keys %v, want %v", got, wantKeys)
	}

	waitRouted(t, proxy, "echo_local")
	if r, err := callEcho(proxy, "echo_local", "héllo local"); err != nil || r != "héllo local" {
		t.Errorf("echo through the proxy: %q, %v", r, err)
	}

	// Removed by hand: put back (same owner) within about a second.
	if err := os.Remove(s.localFile(dir)); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	back := s.waitLocalFile(t, dir, 3*time.Second)
	if took := time.Since(removed); took > 1500*time.Millisecond {
		t.Errorf("put back after %v, want about 1 s", took)
	}
	if back["token"] != rec["token"] || back["pid"] != rec["pid"] {
		t.Errorf("put back with another owner: %v, was %v", back, rec)
	}
	waitRouted(t, proxy, "echo_local")

	// SIGTERM: the file goes first (the service still serves for the
	// quiet period), then the proxy no longer routes to it.
	s.signal(syscall.SIGTERM)
	if !waitFor(time.Second, func() bool { _, err := os.Stat(s.localFile(dir)); return os.IsNotExist(err) }) {
		t.Fatalf("%s still there 1 s after SIGTERM", s.localFile(dir))
	}
	if !s.alive() {
		t.Errorf("the service exited before its quiet period")
	}
	waitUnrouted(t, proxy, "echo_local", 5*time.Second)
	if code := s.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}
	if !logContains(s.proc, "deregistered "+s.localFile(dir)) {
		t.Errorf("no deregistration logged:\n%s", s.logTail())
	}
}

// A service killed with SIGKILL leaves its file; the proxy's watcher sees
// the owner dead, removes it and stops routing.
func TestLocalRegistryKilledService(t *testing.T) {
	dir := filepath.Join(workDir, "local-registry-kill")
	proxy := startLocalProxy(t, "local-proxy-kill", dir)
	s := startService(t, "echo_killed", map[string]string{"zk": "local:" + dir})
	s.waitLocalFile(t, dir, 20*time.Second)
	waitRouted(t, proxy, "echo_killed")
	s.kill()
	if !waitFor(5*time.Second, func() bool { _, err := os.Stat(s.localFile(dir)); return os.IsNotExist(err) }) {
		t.Errorf("the dead service's file %s is still there", s.localFile(dir))
	}
	waitUnrouted(t, proxy, "echo_killed", 5*time.Second)
}

// A product directory that is a symbolic link (to another product's) is
// refused at start, naming it; nothing is written through the link.
func TestLocalRegistryRefusesLinkedProduct(t *testing.T) {
	dir := filepath.Join(workDir, "local-registry-link")
	if err := os.MkdirAll(filepath.Join(dir, "other", "services"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "other"), filepath.Join(dir, "test")); err != nil {
		t.Fatal(err)
	}
	s := startService(t, "echo_linked", map[string]string{"zk": "local:" + dir})
	if code := s.wait(10 * time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1:\n%s", code, s.logTail())
	}
	if want := filepath.Join(dir, "test") + " is a symbolic link"; !logContains(s.proc, want) {
		t.Errorf("the error does not say %q:\n%s", want, s.logTail())
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "other", "services")); len(entries) != 0 {
		t.Errorf("wrote through the link: %v", entries)
	}
}

// A Rust service (rpc-demo) on the same local registry writes a record
// with the same fields as the Go one.
func TestLocalRecordMatchesRust(t *testing.T) {
	demo := filepath.Join(filepath.Dir(proxyBin), "rpc-demo")
	if _, err := os.Stat(demo); err != nil {
		t.Skipf("%s not built", demo)
	}
	dir := filepath.Join(workDir, "local-registry-rust")
	goSvc := startService(t, "echo_go_side", map[string]string{"zk": "local:" + dir})
	goRec := goSvc.waitLocalFile(t, dir, 20*time.Second)

	port := strconv.Itoa(freePort())
	ini := writeINI("rust-demo", map[string]string{
		"zk": "local:" + dir, "product": "test", "service": "echo_rust_side",
		"front_host": "127.0.0.1", "front_port": port,
	})
	p, err := startProc("rust-demo", workDir, nil, demo, "service", "-c", ini)
	if err != nil {
		t.Fatal(err)
	}
	defer p.kill()
	rust := &service{proc: p, name: "echo_rust_side", address: "127.0.0.1:" + port}
	rustRec := rust.waitLocalFile(t, dir, 20*time.Second)
	if g, r := keysOf(goRec), keysOf(rustRec); strings.Join(g, ",") != strings.Join(r, ",") {
		t.Errorf("Go record keys %v, Rust's %v", g, r)
	}
}
