// Types the inventory service takes from another file (an include).
namespace rs shared

// Where an item is kept.
struct Shelf {
  1: required string aisle,
  2: i16 level,
}

enum Kind { TOOL = 1, PART, SUPPLY = 10 }
