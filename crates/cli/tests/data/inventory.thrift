// The service `rpcctl call` is tested against (crates/cli/tests/call.rs):
// structs from an included file, an enum, a typedef, containers, binary
// and a declared exception.
include "shared.thrift"
namespace rs inventory

typedef map<string, list<i32>> Scores

struct Item {
  1: required string name,
  2: shared.Kind kind,
  3: set<string> tags,
  4: optional binary photo,
  5: map<i64, shared.Shelf> shelves,
  6: list<double> weights,
  7: bool fragile,
}

exception Missing {
  1: string name,
  2: i32 code,
}

service Inventory {
  // Answers the item it is given.
  Item put(1: Item item),
  // Each list's sum; an empty list raises Missing.
  map<string, i64> totals(1: Scores scores) throws (1: Missing missing),
}
