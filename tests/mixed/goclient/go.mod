module rpcproxy/mixed

go 1.19

require (
	github.com/apache/thrift v0.17.0
	github.com/samuel/go-zookeeper v0.0.0-20180130194729-c4fab1a1d004
	rpcproxy/go v0.0.0
)

// The Echo example's generated code (go/gen/echo).
replace rpcproxy/go => ../../../go
