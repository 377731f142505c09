package rpcsdk_test

import (
	"context"
	"fmt"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"rpcproxy/go/gen/echo"
	"rpcproxy/go/rpcsdk"
)

// The methods of echo.Echo this example leaves out (examples/echo-service
// has them all).
type others = echo.Echo

type handler struct{ others }

func (handler) Echo(ctx context.Context, m string) (string, error) { return m, nil }

// A service's whole main(): `echo-service -c config.ini`.
func ExampleRpcMain() {
	rpcsdk.RpcMain("echo-service", "the Echo service", nil,
		func(*rpcsdk.Config) (thrift.TProcessor, error) {
			return echo.NewEchoProcessor(handler{}), nil
		})
}

// Calls through the local proxy from any number of goroutines.
func ExampleClientPool() {
	pool := rpcsdk.NewClientPool("127.0.0.1:5550", 8, 5*time.Second)
	defer pool.Close()
	e := echo.NewEchoClient(pool.Client("echo")) // one generated client per goroutine
	s, err := e.Echo(context.Background(), "hi")
	fmt.Println(s, err)
}
