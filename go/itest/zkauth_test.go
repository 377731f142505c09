package itest

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/samuel/go-zookeeper/zk"
)

// A service with credentials (zk_auth_file) creates its nodes with the
// Rust registry's ACLs: an unauthenticated client reads them but cannot
// remove or rewrite them; after a session expiry the endpoint comes back
// under the new session, as protected; a registrant of the same service
// with other credentials, or none, is refused with a clear error. On a
// ZooKeeper of its own, so that the shared parents are created here.
func TestZKAuthProtectsRegistration(t *testing.T) {
	hosts, zkProc, err := newZooKeeper("zookeeper-auth")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(zkProc.kill)
	anon, _, err := zk.Connect([]string{hosts}, 10*time.Second, zk.WithLogger(quiet{}))
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	// ZooKeeper shows a digest ACL's hash only to a client that may
	// administer the node: the ACLs are read by the owner.
	owner, _, err := zk.Connect([]string{hosts}, 10*time.Second, zk.WithLogger(quiet{}))
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	if err := owner.AddAuth("digest", []byte("svc-echo:s3cr:et")); err != nil {
		t.Fatal(err)
	}

	authFile := filepath.Join(workDir, "echo_acl.auth")
	if err := os.WriteFile(authFile, []byte("digest:svc-echo:s3cr:et\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startService(t, "echo_acl", map[string]string{"zk": hosts, "zk_auth_file": authFile, "zk_session_timeout": "1"})
	endpoint, service := s.nodePath(), "/zk/product/test/services/echo_acl"
	var stat *zk.Stat
	if !waitFor(20*time.Second, func() bool {
		_, stat, err = anon.Get(endpoint)
		return err == nil || !s.alive()
	}) || !s.alive() {
		t.Fatalf("not registered at %s: %v\n%s", endpoint, err, s.logTail())
	}

	shared := zk.WorldACL(zk.PermRead | zk.PermCreate)
	owned := append(zk.DigestACL(zk.PermAll, "svc-echo", "s3cr:et"), zk.WorldACL(zk.PermRead)...)
	checkACLs := func(when string) {
		t.Helper()
		for path, want := range map[string][]zk.ACL{
			"/zk": shared, "/zk/product": shared, "/zk/product/test": shared, "/zk/product/test/services": shared,
			service: owned, endpoint: owned,
		} {
			got, _, err := owner.GetACL(path)
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("%s: ACL of %s is %v (%v), want %v", when, path, got, err, want)
			}
		}
		// Anyone reads; nobody without the credentials removes or rewrites.
		if _, _, err := anon.Get(endpoint); err != nil {
			t.Errorf("%s: an unauthenticated read: %v", when, err)
		}
		if err := anon.Delete(endpoint, -1); !errors.Is(err, zk.ErrNoAuth) {
			t.Errorf("%s: an unauthenticated delete of the endpoint: %v, want ErrNoAuth", when, err)
		}
		if _, err := anon.Set(endpoint, []byte(`{"frontend":"127.0.0.1:1"}`), -1); !errors.Is(err, zk.ErrNoAuth) {
			t.Errorf("%s: an unauthenticated write of the endpoint: %v, want ErrNoAuth", when, err)
		}
		if err := anon.Delete(service, -1); !errors.Is(err, zk.ErrNoAuth) {
			t.Errorf("%s: an unauthenticated delete of the service node: %v, want ErrNoAuth", when, err)
		}
		if err := anon.Delete("/zk/product/test/services", -1); !errors.Is(err, zk.ErrNoAuth) {
			t.Errorf("%s: an unauthenticated delete of services: %v, want ErrNoAuth", when, err)
		}
	}
	checkACLs("registered")
	if log := readLog(s.proc); !strings.Contains(log, "digest:svc-echo") || strings.Contains(log, "s3cr") {
		t.Errorf("the log should name digest:svc-echo and never the password:\n%s", log)
	}

	// Session expiry: the new session authenticates again (the library
	// re-sends the credentials), or it could not create its endpoint
	// under the service's node.
	old := stat.EphemeralOwner
	s.signal(syscall.SIGSTOP)
	expired := waitFor(15*time.Second, func() bool {
		ok, _, err := anon.Exists(endpoint)
		return err == nil && !ok
	})
	s.signal(syscall.SIGCONT)
	if !expired {
		t.Fatalf("the node outlived the frozen process's session")
	}
	back := waitFor(15*time.Second, func() bool {
		_, st, err := anon.Get(endpoint)
		return err == nil && st.EphemeralOwner != old && st.EphemeralOwner != 0
	})
	if !back {
		t.Fatalf("not registered again after session expiry:\n%s", s.logTail())
	}
	checkACLs("after session expiry")

	// The same service with other credentials, or none: refused at once.
	for _, keys := range []map[string]string{
		{"zk": hosts, "zk_auth": "digest:intruder:pw-other"},
		{"zk": hosts},
	} {
		other := startService(t, "echo_acl", keys)
		if code := other.wait(20 * time.Second); code != 1 {
			t.Errorf("%v: exit code %d, want 1:\n%s", keys, code, other.logTail())
			continue
		}
		log := readLog(other.proc)
		if !strings.Contains(log, "not allowed to register "+other.nodePath()) ||
			!strings.Contains(log, "belongs to another ZooKeeper identity") || strings.Contains(log, "pw-other") {
			t.Errorf("%v: the refusal is not clear:\n%s", keys, log)
		}
		if ok, _, _ := anon.Exists(other.nodePath()); ok {
			t.Errorf("%v: registered anyway", keys)
		}
	}
	if _, _, err := anon.Get(endpoint); err != nil || !s.alive() {
		t.Errorf("the owner's endpoint after the refusals: %v", err)
	}
}

// A proxy without credentials routes to a service registered with them;
// a service node left open (created without credentials) is warned about.
func TestZKAuthServiceIsRoutedAndAnOpenServiceNodeWarned(t *testing.T) {
	open := "/zk/product/test/services/echo_auth_open"
	if err := mkdirs(open); err != nil {
		t.Fatal(err)
	}
	s := startService(t, "echo_auth_open", map[string]string{"zk_auth": "digest:svc-open:pw-secret"})
	s.waitNode(t, 20*time.Second)
	waitReady(t, "echo_auth_open")
	if !logContains(s.proc, "lets anyone delete its children") {
		t.Errorf("no warning about the open service node:\n%s", s.logTail())
	}
	// What an unauthenticated client sees: the identity, the hash masked.
	got, _, err := zkConn.GetACL(s.nodePath())
	want := []zk.ACL{{Perms: zk.PermAll, Scheme: "digest", ID: "svc-open:x"}, {Perms: zk.PermRead, Scheme: "world", ID: "anyone"}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("ACL of the endpoint: %v (%v), want %v", got, err, want)
	}
	// The endpoint's own ACL holds (a write); its removal is up to the
	// open service node's, which is what the warning is about.
	if _, err := zkConn.Set(s.nodePath(), []byte("{}"), -1); !errors.Is(err, zk.ErrNoAuth) {
		t.Errorf("an unauthenticated write of the endpoint: %v, want ErrNoAuth", err)
	}
	if strings.Contains(readLog(s.proc), "pw-secret") {
		t.Errorf("the password is in the log:\n%s", s.logTail())
	}
}
