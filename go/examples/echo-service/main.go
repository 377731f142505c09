// Command echo-service serves the Echo example (examples/thrift/echo.thrift)
// on rpc_proxy: `echo-service -c config.ini`. The tests run it as a real
// process behind the real proxy.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"rpcproxy/go/gen/echo"
	"rpcproxy/go/rpcsdk"
)

// maxSleepMs bounds `sleep`, so a caller cannot park a goroutine for ever.
const maxSleepMs = 60_000

type handler struct{}

// Echo answers its argument; "pid" answers this process's id, so tests can
// tell which instance served a call.
func (handler) Echo(_ context.Context, message string) (string, error) {
	if message == "pid" {
		return strconv.Itoa(os.Getpid()), nil
	}
	return message, nil
}

func (handler) Add(_ context.Context, a, b int64) (int64, error) {
	s := a + b
	if (s > a) != (b > 0) {
		return 0, fmt.Errorf("%d + %d overflows i64", a, b)
	}
	return s, nil
}

// Sleep answers this process's id after ms milliseconds.
func (handler) Sleep(_ context.Context, ms int32) (string, error) {
	if ms < 0 {
		ms = 0
	}
	if ms > maxSleepMs {
		ms = maxSleepMs
	}
	time.Sleep(time.Duration(ms) * time.Millisecond)
	return strconv.Itoa(os.Getpid()), nil
}

func (handler) Fail(_ context.Context, message string) error {
	return &echo.EchoError{Message: message}
}

func (handler) Notify(_ context.Context, message string) error {
	if path := os.Getenv("ECHO_NOTIFY_FILE"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = fmt.Fprintln(f, message)
		return err
	}
	return nil
}

func main() {
	rpcsdk.RpcMain("echo-service", "the Echo example service",
		func(c *rpcsdk.Config) error {
			if c.Service == "" {
				return errors.New("`service` is not set")
			}
			return nil
		},
		func(*rpcsdk.Config) (thrift.TProcessor, error) {
			return echo.NewEchoProcessor(handler{}), nil
		})
}
