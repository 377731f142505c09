// The example service used by the demo, the SDK tests and the Python tests.
namespace py echo
namespace rs echo

exception EchoError {
  1: string message
}

service Echo {
  // Answers its argument.
  string echo(1: string message),
  // Answers a + b.
  i64 add(1: i64 a, 2: i64 b),
  // Answers after `ms` milliseconds.
  string sleep(1: i32 ms),
  // Always raises EchoError with the given message.
  void fail(1: string message) throws (1: EchoError error),
  // Fire and forget.
  oneway void notify(1: string message),
}
