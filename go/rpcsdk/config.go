package rpcsdk

import (
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Config is what config.ini says (SPEC §7), with the same keys, defaults
// and parsing rules as the Rust and Python readers: `key=value` lines, `#`
// starts a comment anywhere on a line, spaces around keys and values are
// trimmed, an invalid value is an error naming the key, and keys this SDK
// does not use are kept (in Other) rather than rejected.
type Config struct {
	// ZooKeeper hosts, `h1:2181,h2:2181`; empty when `zk` is unset or names
	// the project's local registry (LocalRegistry then holds its directory).
	ZK               string
	LocalRegistry    string
	Product          string
	ZKSessionTimeout time.Duration
	Verbose          bool
	Service          string
	FrontHost        string
	FrontPort        int // 0: unset
	FrontSock        string
	IPPrefix         string
	ProxyAddress     []string
	RPCTimeout       time.Duration
	StandAlone       bool

	// ZooKeeper identity (`zk_auth = digest:user:password`, or the same
	// text in the file `zk_auth_file` names, which must be its owner's
	// alone). With it the service's session authenticates and the nodes
	// it creates only it may change or delete; everyone may read them.
	// Nil: no authentication, nodes open to all (as before).
	ZKAuth *ZKAuth

	// The project's limits and tunables that a service uses.
	MaxFrameSize      int
	MaxConnections    int
	MaxInflight       int
	HeartbeatInterval time.Duration
	HeartbeatTimeout  time.Duration
	FrameTimeout      time.Duration
	QuietPeriod       time.Duration
	StopTimeout       time.Duration

	// Keys read but not used by a Go service (those of the proxy, the LB,
	// workers, metrics…), and keys nobody knows (Unknown, warned about).
	Other   map[string]string
	Unknown map[string]string
}

// DefaultConfig holds the defaults every key has when the file omits it.
func DefaultConfig() *Config {
	return &Config{
		LocalRegistry:     defaultLocalRegistry(),
		Product:           "test",
		ZKSessionTimeout:  30 * time.Second,
		RPCTimeout:        15 * time.Second,
		MaxFrameSize:      16_384_000,
		MaxConnections:    20_000,
		MaxInflight:       1024,
		HeartbeatInterval: time.Second,
		HeartbeatTimeout:  6 * time.Second,
		FrameTimeout:      30 * time.Second,
		QuietPeriod:       5 * time.Second,
		StopTimeout:       30 * time.Second,
		Other:             map[string]string{},
		Unknown:           map[string]string{},
	}
}

func defaultLocalRegistry() string {
	if d := os.Getenv("RPC_REGISTRY_DIR"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "rpc_proxy-registry")
}

// Keys of the project that a Go service accepts and ignores.
var otherKeys = map[string]bool{
	"back_address": true, "worker_pool_size": true, "worker_prefetch": true,
	"falcon_client": true, "profile": true, "backend_max_inflight": true,
	"balance": true, "balance_decay_ms": true, "drain_timeout": true,
	"dispatch": true, "queue_size": true, "register_delay": true,
	"no_worker_grace": true, "worker_command": true, "worker_count": true,
	"worker_max_requests": true, "worker_restart_backoff": true,
	"metrics_address": true, "metrics_max_methods": true,
	"falcon_interval": true, "threads": true, "otlp_endpoint": true,
	"trace_sample_ratio": true, "otlp_service_name": true,
}

// ConfigError names the key or line at fault.
type ConfigError struct{ msg string }

func (e *ConfigError) Error() string { return e.msg }

func invalid(key, value, reason string) error {
	return &ConfigError{fmt.Sprintf("invalid value for `%s`: %q (%s)", key, value, reason)}
}

// LoadConfig reads and parses a config.ini file.
func LoadConfig(path string) (*Config, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, &ConfigError{fmt.Sprintf("cannot read %s: %v", path, err)}
	}
	return ParseConfig(string(text))
}

// ParseConfig parses config.ini text.
func ParseConfig(text string) (*Config, error) {
	c := DefaultConfig()
	authKey := "" // the first of zk_auth, zk_auth_file seen: one identity
	for i, raw := range strings.Split(text, "\n") {
		line := raw
		if j := strings.IndexByte(line, '#'); j >= 0 {
			line = line[:j]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, &ConfigError{fmt.Sprintf("line %d: expected key=value, got %q", i+1, strings.TrimRight(raw, "\r"))}
		}
		k = strings.TrimSpace(k)
		if k == "zk_auth" || k == "zk_auth_file" {
			if authKey != "" {
				return nil, invalid(k, "", authKey+" is set already: use one")
			}
			authKey = k
		}
		if err := c.Set(k, strings.TrimSpace(v)); err != nil {
			return nil, err
		}
	}
	if c.HeartbeatTimeout <= c.HeartbeatInterval {
		return nil, invalid("heartbeat_timeout_ms", strconv.FormatInt(c.HeartbeatTimeout.Milliseconds(), 10),
			"must exceed heartbeat_interval_ms")
	}
	return c, nil
}

// Set sets one key as if read from the file (also how tests and tools
// override a loaded file). Of `zk_auth` and `zk_auth_file`, the one set
// last holds (a file naming both is refused by ParseConfig).
func (c *Config) Set(k, v string) error {
	var err error
	switch k {
	case "zk":
		err = c.setRegistry(v)
	case "product":
		if v == "" || strings.Contains(v, "/") {
			return invalid(k, v, "must be a non-empty name without '/'")
		}
		if strings.Contains(v, ",") {
			// The original Java SDK registered in each product of a list;
			// a node named "a,b" would be read by no proxy.
			return invalid(k, v, "names one product (a list, which the original Java SDK registered in each, "+
				"is not supported: run one process per product)")
		}
		c.Product = v
	case "zk_session_timeout":
		c.ZKSessionTimeout, err = seconds(k, v)
	case "zk_auth":
		// Errors show the value with its password hidden.
		c.ZKAuth = nil
		if v != "" {
			a, aerr := ParseZKAuth(v)
			if aerr != nil {
				return invalid(k, hidePassword(v), aerr.Error())
			}
			c.ZKAuth = a
		}
	case "zk_auth_file":
		c.ZKAuth = nil
		if v != "" {
			a, aerr := ReadZKAuthFile(v)
			if aerr != nil {
				return invalid(k, v, aerr.Error())
			}
			c.ZKAuth = a
		}
	case "verbose":
		c.Verbose, err = boolFlag(k, v)
	case "service":
		c.Service = v
	case "front_host":
		c.FrontHost = v
	case "front_port":
		c.FrontPort = 0
		if v != "" {
			p, perr := strconv.ParseUint(v, 10, 16)
			if perr != nil {
				return invalid(k, v, "expected a port number")
			}
			c.FrontPort = int(p)
		}
	case "front_sock":
		c.FrontSock = v
	case "ip_prefix":
		c.IPPrefix = v
	case "proxy_address":
		c.ProxyAddress = nil
		for _, a := range strings.Split(v, ",") {
			if a = strings.TrimSpace(a); a != "" {
				c.ProxyAddress = append(c.ProxyAddress, a)
			}
		}
	case "rpc_timeout":
		c.RPCTimeout, err = seconds(k, v)
	case "stand_alone":
		c.StandAlone, err = boolFlag(k, v)
	case "max_frame_size":
		c.MaxFrameSize, err = positive(k, v)
	case "max_connections":
		c.MaxConnections, err = positive(k, v)
	case "max_inflight":
		c.MaxInflight, err = positive(k, v)
	case "heartbeat_interval_ms":
		c.HeartbeatInterval, err = millis(k, v)
	case "heartbeat_timeout_ms":
		c.HeartbeatTimeout, err = millis(k, v)
	case "frame_timeout":
		c.FrameTimeout, err = seconds(k, v)
	case "quiet_period":
		c.QuietPeriod, err = seconds(k, v)
	case "stop_timeout":
		c.StopTimeout, err = seconds(k, v)
	default:
		if otherKeys[k] {
			c.Other[k] = v
		} else {
			logf(levelWarn, "unknown configuration key ignored: %s", k)
			c.Unknown[k] = v
		}
	}
	return err
}

// setRegistry reads `zk`: ZooKeeper hosts, or (empty, `local`, `local:DIR`)
// the project's embedded registry.
func (c *Config) setRegistry(v string) error {
	switch {
	case v == "" || v == "local":
		c.ZK, c.LocalRegistry = "", defaultLocalRegistry()
		return nil
	case strings.HasPrefix(v, "local:"):
		dir := strings.TrimPrefix(v, "local:")
		if dir == "" {
			return invalid("zk", v, "local: needs a directory")
		}
		c.ZK, c.LocalRegistry = "", dir
		return nil
	}
	for _, host := range strings.Split(v, ",") {
		i := strings.LastIndexByte(host, ':')
		if i < 0 {
			return invalid("zk", v, "expected host:port[,host:port]")
		}
		if _, err := strconv.ParseUint(host[i+1:], 10, 16); i == 0 || err != nil {
			return invalid("zk", v, fmt.Sprintf("bad ZooKeeper address %q", host))
		}
	}
	c.ZK, c.LocalRegistry = v, ""
	return nil
}

func boolFlag(k, v string) (bool, error) {
	switch v {
	case "0", "false", "no", "off", "":
		return false, nil
	case "1", "true", "yes", "on":
		return true, nil
	}
	return false, invalid(k, v, "expected 0 or 1")
}

func seconds(k, v string) (time.Duration, error) {
	s, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(s) || s < 0 || s > 1e9 {
		return 0, invalid(k, v, "expected seconds >= 0")
	}
	return time.Duration(s * float64(time.Second)), nil
}

func millis(k, v string) (time.Duration, error) {
	ms, err := strconv.ParseUint(v, 10, 63)
	if err != nil {
		return 0, invalid(k, v, "expected milliseconds")
	}
	return time.Duration(ms) * time.Millisecond, nil
}

func positive(k, v string) (int, error) {
	n, err := strconv.ParseUint(v, 10, 31)
	if err != nil {
		return 0, invalid(k, v, "expected a number")
	}
	if n == 0 {
		return 0, invalid(k, v, "must be at least 1")
	}
	return int(n), nil
}

// FrontAddress is the address a service listens on and registers:
// `front_sock` (made absolute), else `front_host:front_port`, else this
// machine's first IPv4 address starting with `ip_prefix`, with
// `front_port`. An address containing `:` is TCP, anything else a Unix
// socket path (SPEC §1).
func (c *Config) FrontAddress() (string, error) {
	if c.FrontSock != "" {
		return filepath.Abs(c.FrontSock)
	}
	if c.FrontPort == 0 {
		return "", &ConfigError{"missing `front_port`"}
	}
	host := c.FrontHost
	if host == "" {
		if c.IPPrefix == "" {
			return "", &ConfigError{"missing `front_host`"}
		}
		host = LocalIPWithPrefix(c.IPPrefix)
		if host == "" {
			return "", invalid("ip_prefix", c.IPPrefix, "no local IPv4 address starts with it")
		}
	}
	return net.JoinHostPort(host, strconv.Itoa(c.FrontPort)), nil
}

// LocalIPWithPrefix is this machine's first IPv4 address whose text
// starts with prefix, or "".
func LocalIPWithPrefix(prefix string) string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	for _, a := range addrs {
		ipnet, ok := a.(*net.IPNet)
		if !ok || ipnet.IP.To4() == nil {
			continue
		}
		if ip := ipnet.IP.To4().String(); strings.HasPrefix(ip, prefix) {
			return ip
		}
	}
	return ""
}

// isUnix tells a Unix socket path from `host:port` (SPEC §1).
func isUnix(address string) bool { return !strings.Contains(address, ":") }
