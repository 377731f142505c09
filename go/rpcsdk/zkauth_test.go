package rpcsdk

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestZKAuthParsesDigestUserPassword(t *testing.T) {
	a, err := ParseZKAuth(" digest:svc-echo:s3cr:et ")
	if err != nil {
		t.Fatal(err)
	}
	if a.User() != "svc-echo" || string(a.Credentials()) != "svc-echo:s3cr:et" || a.String() != "digest:svc-echo" {
		t.Errorf("user %q, credentials %q, shown %q", a.User(), a.Credentials(), a)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
		for _, v := range []interface{}{a, *a} {
			if shown := fmt.Sprintf(verb, v); strings.Contains(shown, "s3cr") || !strings.Contains(shown, "svc-echo") {
				t.Errorf("%s of %T: %s", verb, v, shown)
			}
		}
	}
}

func TestZKAuthRefusesOtherSchemesAndShapesWithoutEchoingThePassword(t *testing.T) {
	for _, bad := range []string{
		"", "digest", "digest:user", "digest::pw-secret", "digest:us er:pw-secret", "digest:us\ter:pw-secret",
		"digest:user:", "sasl:user:pw-secret", "ip:10.0.0.1", "world:anyone", "digest:user:pw-secret\nmore",
		"digest:user:pw-secret\x7f",
	} {
		a, err := ParseZKAuth(bad)
		if err == nil {
			t.Errorf("%q accepted as %v", bad, a)
			continue
		}
		if strings.Contains(err.Error(), "pw-secret") {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if _, err := ParseZKAuth("sasl:u:p"); err == nil || !strings.Contains(err.Error(), "sasl") {
		t.Errorf("the scheme is not named: %v", err)
	}
}

func TestZKAuthConfigKeysAndTheirErrorsHideThePassword(t *testing.T) {
	c, err := ParseConfig("")
	if err != nil || c.ZKAuth != nil {
		t.Fatalf("no key: %v %v", c.ZKAuth, err)
	}
	c, err = ParseConfig("zk_auth = digest:echo:pw-secret\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.ZKAuth.User() != "echo" || string(c.ZKAuth.Credentials()) != "echo:pw-secret" || len(c.Unknown) != 0 {
		t.Fatalf("zk_auth: %v, unknown %v", c.ZKAuth, c.Unknown)
	}
	for _, verb := range []string{"%v", "%+v", "%#v"} {
		if shown := fmt.Sprintf(verb, c); strings.Contains(shown, "pw-secret") {
			t.Errorf("%s of the config shows the password: %s", verb, shown)
		}
	}
	if c, err := ParseConfig("zk_auth="); err != nil || c.ZKAuth != nil {
		t.Errorf("empty zk_auth: %v %v", c, err)
	}
	for _, bad := range []string{
		"zk_auth = sasl:echo:pw-secret", "zk_auth = digest:echo", "zk_auth = digest::pw-secret",
		"zk_auth = echo:pw-secret", "zk_auth = digest:e cho:pw-secret",
	} {
		_, err := ParseConfig(bad)
		if err == nil || !strings.Contains(err.Error(), "`zk_auth`") || strings.Contains(err.Error(), "pw-secret") {
			t.Errorf("%s: %v", bad, err)
		}
	}
	// The later of two Sets holds (command-line style overrides).
	c, _ = ParseConfig("zk_auth = digest:echo:pw-secret\n")
	if err := c.Set("zk_auth", ""); err != nil || c.ZKAuth != nil {
		t.Errorf("override with none: %v %v", c.ZKAuth, err)
	}
}

func TestZKAuthFileMustBeTheOwnersAlone(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "zk.auth")
	if err := os.WriteFile(file, []byte("digest:echo:pw:secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key := "zk_auth_file = " + file
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620, 0o602, 0o610, 0o601} {
		if err := os.Chmod(file, mode); err != nil {
			t.Fatal(err)
		}
		_, err := ParseConfig(key)
		if err == nil || !strings.Contains(err.Error(), "`zk_auth_file`") || !strings.Contains(err.Error(), "chmod 600") ||
			strings.Contains(err.Error(), "secret") {
			t.Errorf("mode %04o: %v", mode, err)
		}
	}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		if err := os.Chmod(file, mode); err != nil {
			t.Fatal(err)
		}
		c, err := ParseConfig(key)
		if err != nil {
			t.Fatalf("mode %04o: %v", mode, err)
		}
		if c.ZKAuth.String() != "digest:echo" || string(c.ZKAuth.Credentials()) != "echo:pw:secret" {
			t.Errorf("mode %04o: %v", mode, c.ZKAuth)
		}
	}
	for _, path := range []string{filepath.Join(dir, "missing"), dir} {
		if _, err := ParseConfig("zk_auth_file = " + path); err == nil || !strings.Contains(err.Error(), "`zk_auth_file`") {
			t.Errorf("%s: %v", path, err)
		}
	}
	// A bad text in the file: named by the key, the password not echoed.
	bad := filepath.Join(dir, "bad.auth")
	if err := os.WriteFile(bad, []byte("digest:echo:pw-secret\nsecond line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseConfig("zk_auth_file = " + bad); err == nil || !strings.Contains(err.Error(), "`zk_auth_file`") ||
		strings.Contains(err.Error(), "pw-secret") {
		t.Errorf("two lines: %v", err)
	}
	if c, err := ParseConfig("zk_auth_file ="); err != nil || c.ZKAuth != nil {
		t.Errorf("empty zk_auth_file: %v %v", c, err)
	}

	// One identity: both keys (or one twice) in a file is a mistake.
	for _, both := range []string{
		"zk_auth = digest:echo:pw-secret\n" + key,
		key + "\nzk_auth = digest:echo:pw-secret",
		"zk_auth = digest:echo:pw-secret\nzk_auth = digest:other:pw-secret",
	} {
		_, err := ParseConfig(both)
		if err == nil || !strings.Contains(err.Error(), "is set already") || strings.Contains(err.Error(), "pw-secret") {
			t.Errorf("%q: %v", both, err)
		}
	}
}
