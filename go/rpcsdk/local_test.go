package rpcsdk

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The file is byte for byte what the Rust registry writes
// (serde_json::to_vec_pretty of the endpoint, product and owner).
func TestLocalRecordEncoding(t *testing.T) {
	ep := Endpoint{
		Service: "echo", ServiceID: "127_0_0_1_45671", Frontend: "127.0.0.1:45671",
		DeployPath: "/tmp/rtest", CodeURLVersion: "", Hostname: "vm", StartTime: "2026-11-29 09:58:24",
	}
	owner := localOwner{PID: 20781, PIDStart: 3889994, Token: 3391706794065091099}
	got, err := encodeLocalRecord(ep, "test", owner)
	if err != nil {
		t.Fatal(err)
	}
	// A file written by `rpc-demo service` with `zk = local:DIR`.
	want := `{
  "service": "echo",
  "service_id": "127_0_0_1_45671",
  "frontend": "127.0.0.1:45671",
  "deploy_path": "/tmp/rtest",
  "code_url_version": "",
  "hostname": "vm",
  "start_time": "2026-11-29 09:58:24",
  "product": "test",
  "pid": 20781,
  "pid_start": 3889994,
  "token": 3391706794065091099
}`
	if string(got) != want {
		t.Errorf("record:\n%s\nwant:\n%s", got, want)
	}
	// A token above 2^63 survives (Rust's u64).
	owner.Token = 18446744073709551615
	got, _ = encodeLocalRecord(ep, "test", owner)
	if back, ok := decodeLocalOwner(got); !ok || back != owner {
		t.Errorf("decode: %+v %v, want %+v", back, ok, owner)
	}
	for _, bad := range []string{"", "{", `{"service":"echo"}`, `[1]`} {
		if o, ok := decodeLocalOwner([]byte(bad)); ok {
			t.Errorf("decode %q: owner %+v, want none", bad, o)
		}
	}
	// A record written by hand without pid_start or token: pid alone.
	if o, ok := decodeLocalOwner([]byte(`{"pid": 7}`)); !ok || o != (localOwner{PID: 7}) {
		t.Errorf("pid only: %+v %v", o, ok)
	}
}

func TestParseProcStart(t *testing.T) {
	rest := "S 1 20781 20781 0 -1 4194560 1234 0 0 0 5 3 0 0 20 0 4 0 3889994 123456 789 18446744073709551615"
	for _, name := range []string{"rpc-demo", "my (odd) name", "a) b ) c", ""} {
		stat := "20781 (" + name + ") " + rest + "\n"
		if v, ok := parseProcStart(stat); !ok || v != 3889994 {
			t.Errorf("command name %q: %d %v, want 3889994", name, v, ok)
		}
	}
	for _, bad := range []string{"", "20781 (x", "20781 (x) S 1 2", "20781 (x) " + strings.Replace(rest, "3889994", "later", 1)} {
		if v, ok := parseProcStart(bad); ok {
			t.Errorf("%q: parsed %d", bad, v)
		}
	}
	// This process: its start time, in ticks since boot, is known on Linux.
	if _, err := os.Stat("/proc/self/stat"); err == nil {
		if processStart(os.Getpid()) == 0 {
			t.Errorf("no start time for this process")
		}
	}
	if processStart(1<<30) != 0 {
		t.Errorf("a start time for a process that cannot exist")
	}
}

func TestLocalRegistration(t *testing.T) {
	dir := t.TempDir()
	ep := NewEndpoint("echo", "127.0.0.1:7001")
	r, err := registerLocal(dir, "test", ep)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "test", "services", "echo", "127_0_0_1_7001.json")
	if r.path != path {
		t.Fatalf("path %s, want %s", r.path, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := decodeLocalOwner(b); !ok || o.PID != uint32(os.Getpid()) || o != r.owner {
		t.Errorf("owner %+v, want %+v", o, r.owner)
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, "test", "services", "echo", ".*.tmp"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
	// Removed by hand: back within about a second.
	os.Remove(path)
	deadline := time.Now().Add(3 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not written again", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.deregister()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("deregistered, yet %s is there: %v", path, err)
	}
	r.deregister() // twice is harmless

	// Another owner's file is neither taken back nor removed.
	r, err = registerLocal(dir, "test", ep)
	if err != nil {
		t.Fatal(err)
	}
	other := r.owner
	other.Token++
	theirs, _ := encodeLocalRecord(ep, "test", other)
	if err := os.WriteFile(path, theirs, 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(localCheck + 300*time.Millisecond)
	r.deregister()
	if b, _ := os.ReadFile(path); string(b) != string(theirs) {
		t.Errorf("the successor's file was changed: %s", b)
	}
}

func TestLocalRegistryRefusesLinkedProduct(t *testing.T) {
	dir := t.TempDir()
	if _, err := openLocal(dir, "other"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "other"), filepath.Join(dir, "test")); err != nil {
		t.Fatal(err)
	}
	_, err := registerLocal(dir, "test", NewEndpoint("echo", "127.0.0.1:7001"))
	if err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("a linked product directory: %v, want a refusal", err)
	}
	// Its `services` directory linked elsewhere: refused too.
	os.MkdirAll(filepath.Join(dir, "p2"), 0o755)
	os.Symlink(filepath.Join(dir, "other", "services"), filepath.Join(dir, "p2", "services"))
	if _, err := openLocal(dir, "p2"); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("a linked services directory: %v, want a refusal", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "other", "services")); len(entries) != 0 {
		t.Errorf("wrote through the link: %v", entries)
	}
}

// `zk` unset or `local` is the Rust proxy's default directory.
func TestDefaultLocalRegistryIsRusts(t *testing.T) {
	t.Setenv("RPC_REGISTRY_DIR", "")
	t.Setenv("TMPDIR", "/var/tmp/x")
	if d := defaultLocalRegistry(); d != "/var/tmp/x/rpc_proxy-registry" {
		t.Errorf("TMPDIR: %s", d)
	}
	t.Setenv("RPC_REGISTRY_DIR", "/srv/reg")
	c, err := ParseConfig("zk = local")
	if err != nil || c.LocalRegistry != "/srv/reg" || c.ZK != "" {
		t.Errorf("RPC_REGISTRY_DIR: %v %q", err, c.LocalRegistry)
	}
}
