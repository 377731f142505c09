// The benchmark service (rpc-bench-server; crates/bench/src/wire.rs).
// A worker in another language joins the benchmark by serving this
// interface; rpc-bench checks every reply byte for byte.
namespace py rpc_bench
namespace rs rpc_bench

service bench {
  // Answers `data` unchanged.
  binary echo(1: binary data)
  // Answers `data` after `ms` milliseconds.
  binary sleep(1: binary data, 2: i32 ms)
  // Answers a TApplicationException (type UNKNOWN) whose message is
  // exactly "bench: fail requested".
  void fail(1: binary data)
}
