package rpcsdk

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestReadsTheOriginalsKeys(t *testing.T) {
	c, err := ParseConfig("# comment\n zk = 127.0.0.1:2181,127.0.0.2:2181 \nproduct=online_x\n" +
		"service=echo # trailing\nfront_host=127.0.0.1\nfront_port=5555\nback_address=/tmp/lb.sock\n" +
		"worker_pool_size=4\nproxy_address=127.0.0.1:5550, /run/p.sock\nrpc_timeout=2.5\nverbose=1\n" +
		"zk_session_timeout=10\nfalcon_client=http://x/push\nprofile=0\nstand_alone=0\nip_prefix=\nfront_sock=\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.ZK != "127.0.0.1:2181,127.0.0.2:2181" || c.Product != "online_x" || c.Service != "echo" {
		t.Errorf("zk/product/service: %q %q %q", c.ZK, c.Product, c.Service)
	}
	if a, err := c.FrontAddress(); err != nil || a != "127.0.0.1:5555" {
		t.Errorf("front address %q, %v", a, err)
	}
	if c.RPCTimeout != 2500*time.Millisecond || c.ZKSessionTimeout != 10*time.Second || !c.Verbose || c.StandAlone {
		t.Errorf("rpc_timeout %v, zk_session_timeout %v, verbose %v, stand_alone %v",
			c.RPCTimeout, c.ZKSessionTimeout, c.Verbose, c.StandAlone)
	}
	if strings.Join(c.ProxyAddress, ",") != "127.0.0.1:5550,/run/p.sock" {
		t.Errorf("proxy_address %q", c.ProxyAddress)
	}
	if c.Other["back_address"] != "/tmp/lb.sock" || c.Other["worker_pool_size"] != "4" || len(c.Unknown) != 0 {
		t.Errorf("keys of other components: %v, unknown %v", c.Other, c.Unknown)
	}
}

func TestDefaultsMatchTheRustReader(t *testing.T) {
	c, err := ParseConfig("")
	if err != nil {
		t.Fatal(err)
	}
	if c.Product != "test" || c.ZKSessionTimeout != 30*time.Second || c.RPCTimeout != 15*time.Second {
		t.Errorf("product %q, zk_session_timeout %v, rpc_timeout %v", c.Product, c.ZKSessionTimeout, c.RPCTimeout)
	}
	if c.MaxFrameSize != 16_384_000 || c.MaxConnections != 20_000 || c.MaxInflight != 1024 {
		t.Errorf("limits %d %d %d", c.MaxFrameSize, c.MaxConnections, c.MaxInflight)
	}
	if c.QuietPeriod != 5*time.Second || c.StopTimeout != 30*time.Second || c.FrameTimeout != 30*time.Second {
		t.Errorf("stop %v %v, frame %v", c.QuietPeriod, c.StopTimeout, c.FrameTimeout)
	}
	// No `zk`: the project's local registry, which this SDK cannot use.
	if c.ZK != "" || c.LocalRegistry == "" {
		t.Errorf("zk %q, local %q", c.ZK, c.LocalRegistry)
	}
	if l, _ := ParseConfig("zk=local:/var/reg"); l.LocalRegistry != "/var/reg" || l.ZK != "" {
		t.Errorf("zk=local:DIR: %q %q", l.ZK, l.LocalRegistry)
	}
}

func TestUnknownKeysAreKeptNotFatal(t *testing.T) {
	c, err := ParseConfig("some_future_key = 3\n")
	if err != nil || c.Unknown["some_future_key"] != "3" {
		t.Fatalf("%v %v", c, err)
	}
}

func TestInvalidValuesNameTheKey(t *testing.T) {
	for _, text := range []string{
		"rpc_timeout=soon", "front_port=70000", "zk=nohostport", "zk=:2181", "verbose=2",
		"max_inflight=0", "product=a/b", "product=online_a,online_b", "quiet_period=-1", "heartbeat_timeout_ms=500",
	} {
		_, err := ParseConfig(text)
		key := strings.SplitN(text, "=", 2)[0]
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s: %v", text, err)
		}
	}
	if _, err := ParseConfig("just words"); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("syntax error: %v", err)
	}
}

func TestFrontSockWinsAndBecomesAbsolute(t *testing.T) {
	c, _ := ParseConfig("front_sock=echo.sock\nfront_host=1.2.3.4\nfront_port=1")
	a, err := c.FrontAddress()
	wd, _ := os.Getwd()
	if err != nil || a != filepath.Join(wd, "echo.sock") || !isUnix(a) {
		t.Errorf("%q %v", a, err)
	}
}

func TestFrontAddressFromIPPrefix(t *testing.T) {
	c, _ := ParseConfig("ip_prefix=127.\nfront_port=9")
	if a, err := c.FrontAddress(); err != nil || a != "127.0.0.1:9" {
		t.Errorf("%q %v", a, err)
	}
	c, _ = ParseConfig("ip_prefix=250.250.\nfront_port=9")
	if _, err := c.FrontAddress(); err == nil || !strings.Contains(err.Error(), "ip_prefix") {
		t.Errorf("no matching address: %v", err)
	}
	c, _ = ParseConfig("front_host=127.0.0.1")
	if _, err := c.FrontAddress(); err == nil || !strings.Contains(err.Error(), "front_port") {
		t.Errorf("no port: %v", err)
	}
}

func TestServiceIDFollowsSpec(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:5555":        "127_0_0_1_5555",
		"/tmp/echo.sock":        "tmpecho_sock",
		"192.168.100.200:65535": "92_168_100_200_65535",
	} {
		if got := ServiceID(in); got != want {
			t.Errorf("ServiceID(%q) = %q, want %q", in, got, want)
		}
	}
	if got := servicePath("test", NewEndpoint("echo", "127.0.0.1:5555")); got != "/zk/product/test/services/echo/127_0_0_1_5555" {
		t.Errorf("path %s", got)
	}
}
