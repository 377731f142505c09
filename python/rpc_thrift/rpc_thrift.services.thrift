// The original SDK's base service, for IDLs that include it:
//   include "rpc_thrift.services.thrift"
//   service TypoService extends rpc_thrift.services.RpcServiceBase { ... }
// Code generated from such an IDL imports rpc_thrift.services.*, which this
// package provides (generated from this file; see services/__init__.py).

exception RpcException {
  1: i32  code,
  2: string msg
}

service RpcServiceBase {
    /** Connectivity and latency test client -> service. */
    void ping();
    /** Connectivity and latency test client -> proxy: sent as a HEARTBEAT,
        answered by the proxy itself (see services/RpcServiceBase.py). */
    void ping1();
}
