// Command mixedgo is the Go side of the mixed-fleet tests: a stock Thrift
// client (Apache Thrift's TSocket, TFramedTransport, TBinaryProtocol and
// TMultiplexedProtocol with the generated Echo client, no rpc_proxy code),
// and the original system's ZooKeeper habits (writing endpoint records as
// its registrants did, reading them as its proxy did).
//
//	mixedgo probe -proxy ADDR -services a,b      one JSON line per service
//	mixedgo load -proxy ADDR -service S          calls until stdin closes, then a JSON summary
//	mixedgo register -zk HOSTS -records FILE     ephemeral nodes {path: data} until stdin closes
//	mixedgo read -zk HOSTS -product P            every endpoint record, decoded as the original did
//	mixedgo zkwait -zk HOSTS                     until ZooKeeper grants a session
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/apache/thrift/lib/go/thrift"
	"github.com/samuel/go-zookeeper/zk"

	"rpcproxy/go/gen/echo"
)

func main() {
	if len(os.Args) < 2 {
		fatal("usage: mixedgo probe|load|register|read [flags]")
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	proxy := fs.String("proxy", "127.0.0.1:5550", "the local proxy (host:port)")
	services := fs.String("services", "", "probe: comma-separated services")
	service := fs.String("service", "", "load: the service")
	conns := fs.Int("conns", 2, "load: connections, one caller each")
	sleepMs := fs.Int("sleep-ms", 20, "load: each call is sleep(ms)")
	timeout := fs.Duration("timeout", 15*time.Second, "per call")
	zkHosts := fs.String("zk", "", "ZooKeeper hosts")
	records := fs.String("records", "", "register: a JSON file {path: data}")
	product := fs.String("product", "test", "read: the product")
	_ = fs.Parse(os.Args[2:])
	var err error
	switch os.Args[1] {
	case "probe":
		err = probe(*proxy, strings.Split(*services, ","), *timeout)
	case "load":
		err = load(*proxy, *service, *conns, int32(*sleepMs), *timeout)
	case "register":
		err = register(*zkHosts, *records)
	case "read":
		err = read(*zkHosts, *product)
	case "zkwait":
		var c *zk.Conn
		if c, err = connect(*zkHosts); err == nil {
			c.Close()
		}
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fatal(err.Error())
	}
}

func fatal(msg string) {
	fmt.Fprintln(os.Stderr, "mixedgo:", msg)
	os.Exit(1)
}

// dial opens a stock client for service through the proxy, as any Go
// program using Apache Thrift would.
func dial(proxy, service string, timeout time.Duration) (*echo.EchoClient, thrift.TTransport, error) {
	conf := &thrift.TConfiguration{ConnectTimeout: 5 * time.Second, SocketTimeout: timeout}
	trans := thrift.NewTFramedTransportConf(thrift.NewTSocketConf(proxy, conf), conf)
	if err := trans.Open(); err != nil {
		return nil, nil, err
	}
	proto := thrift.NewTBinaryProtocolConf(trans, conf)
	mux := thrift.NewTMultiplexedProtocol(proto, service)
	return echo.NewEchoClient(thrift.NewTStandardClient(proto, mux)), trans, nil
}

// probeResult is what one service answered; Error is the first failure.
type probeResult struct {
	Service string `json:"service"`
	Echo    string `json:"echo"`
	Add     int64  `json:"add"`
	Who     string `json:"who"`
	Pid     string `json:"pid"`
	Fail    string `json:"fail"`
	Error   string `json:"error"`
}

func probe(proxy string, services []string, timeout time.Duration) error {
	out := json.NewEncoder(os.Stdout)
	for _, s := range services {
		r := probeResult{Service: s}
		if err := probeOne(proxy, s, timeout, &r); err != nil {
			r.Error = err.Error()
		}
		if err := out.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

func probeOne(proxy, service string, timeout time.Duration, r *probeResult) error {
	c, trans, err := dial(proxy, service, timeout)
	if err != nil {
		return err
	}
	defer trans.Close()
	ctx := context.Background()
	if r.Echo, err = c.Echo(ctx, "mixed from go"); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	if r.Add, err = c.Add(ctx, 40, 2); err != nil {
		return fmt.Errorf("add: %w", err)
	}
	if r.Who, err = c.Echo(ctx, "who"); err != nil {
		return fmt.Errorf("echo who: %w", err)
	}
	if r.Pid, err = c.Echo(ctx, "pid"); err != nil {
		return fmt.Errorf("echo pid: %w", err)
	}
	err = c.Fail(ctx, "go asked")
	var declared *echo.EchoError
	switch {
	case errors.As(err, &declared):
		r.Fail = "EchoError: " + declared.Message
	case err != nil:
		return fmt.Errorf("fail: %w", err)
	default:
		return errors.New("fail: no exception")
	}
	return nil
}

// loadSummary counts a load run's calls; Answers counts replies by value.
type loadSummary struct {
	Ok      int            `json:"ok"`
	Failed  int            `json:"failed"`
	Errors  []string       `json:"errors"`
	Answers map[string]int `json:"answers"`
}

// load calls sleep(ms) on conns connections until stdin closes, then
// prints a summary. A failed call is counted and its connection redialled.
func load(proxy, service string, conns int, ms int32, timeout time.Duration) error {
	var mu sync.Mutex
	sum := loadSummary{Answers: map[string]int{}, Errors: []string{}}
	fail := func(e string) {
		mu.Lock()
		defer mu.Unlock()
		sum.Failed++
		if len(sum.Errors) < 20 {
			sum.Errors = append(sum.Errors, e)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var c *echo.EchoClient
			var trans thrift.TTransport
			defer func() {
				if trans != nil {
					trans.Close()
				}
			}()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if c == nil {
					var err error
					if c, trans, err = dial(proxy, service, timeout); err != nil {
						fail(fmt.Sprintf("conn %d dial: %v", i, err))
						time.Sleep(100 * time.Millisecond)
						continue
					}
				}
				who, err := c.Sleep(context.Background(), ms)
				if err != nil {
					fail(fmt.Sprintf("conn %d: %v", i, err))
					trans.Close()
					c, trans = nil, nil
					continue
				}
				mu.Lock()
				sum.Ok++
				sum.Answers[who]++
				mu.Unlock()
			}
		}(i)
	}
	fmt.Println("loading")
	_, _ = io.Copy(io.Discard, os.Stdin)
	close(stop)
	wg.Wait()
	return json.NewEncoder(os.Stdout).Encode(sum)
}

// connect returns a client with a session. A ZooKeeper that has just
// started may drop or stall a first connection; a fresh attempt every few
// seconds does not wait out the library's own 10 s handshake timeout.
func connect(hosts string) (*zk.Conn, error) {
	deadline := time.Now().Add(45 * time.Second)
	for time.Now().Before(deadline) {
		c, events, err := zk.Connect(strings.Split(hosts, ","), 10*time.Second)
		if err != nil {
			return nil, err
		}
		attempt := time.After(3 * time.Second)
	wait:
		for {
			select {
			case e := <-events:
				if e.State == zk.StateHasSession {
					return c, nil
				}
			case <-attempt:
				break wait
			}
		}
		c.Close()
	}
	return nil, errors.New("no ZooKeeper session within 45 s")
}

// register writes each record as the original's registrants did: parents
// persistent with empty data, any leftover node deleted, then the endpoint
// created ephemeral, open to all. The nodes live until stdin closes.
func register(hosts, file string) error {
	raw, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var nodes map[string]string
	if err := json.Unmarshal(raw, &nodes); err != nil {
		return err
	}
	c, err := connect(hosts)
	if err != nil {
		return err
	}
	defer c.Close()
	acl := zk.WorldACL(zk.PermAll)
	for p, data := range nodes {
		parts := strings.Split(strings.Trim(path.Dir(p), "/"), "/")
		for i := range parts {
			dir := "/" + strings.Join(parts[:i+1], "/")
			if _, err := c.Create(dir, nil, 0, acl); err != nil && err != zk.ErrNodeExists {
				return fmt.Errorf("create %s: %w", dir, err)
			}
		}
		_ = c.Delete(p, -1)
		if _, err := c.Create(p, []byte(data), zk.FlagEphemeral, acl); err != nil {
			return fmt.Errorf("create %s: %w", p, err)
		}
	}
	fmt.Printf("registered %d\n", len(nodes))
	_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
	return nil
}

// ServiceEndpoint is the original proxy's record type (src/proxy/endpoint.go).
type ServiceEndpoint struct {
	Service       string `json:"service"`
	ServiceId     string `json:"service_id"`
	Frontend      string `json:"frontend"`
	DeployPath    string `json:"deploy_path"`
	CodeUrlVerion string `json:"code_url_version"`
	Hostname      string `json:"hostname"`
	StartTime     string `json:"start_time"`
}

type readResult struct {
	Service  string           `json:"service"`
	Node     string           `json:"node"`
	Raw      string           `json:"raw"`
	Endpoint *ServiceEndpoint `json:"endpoint"`
	Error    string           `json:"error"`
}

// read lists every endpoint of product as the original proxy did
// (children of services/, then of each service) and decodes each record
// into its type with encoding/json.
func read(hosts, product string) error {
	c, err := connect(hosts)
	if err != nil {
		return err
	}
	defer c.Close()
	base := "/zk/product/" + product + "/services"
	services, _, err := c.Children(base)
	if err != nil {
		return fmt.Errorf("%s: %w", base, err)
	}
	sort.Strings(services)
	out := json.NewEncoder(os.Stdout)
	for _, s := range services {
		nodes, _, err := c.Children(base + "/" + s)
		if err != nil {
			return err
		}
		sort.Strings(nodes)
		for _, n := range nodes {
			r := readResult{Service: s, Node: n}
			data, _, err := c.Get(base + "/" + s + "/" + n)
			if err == nil {
				r.Raw = string(data)
				var e ServiceEndpoint
				if err = json.Unmarshal(data, &e); err == nil {
					r.Endpoint = &e
				}
			}
			if err != nil {
				r.Error = err.Error()
			}
			if err := out.Encode(r); err != nil {
				return err
			}
		}
	}
	return nil
}
