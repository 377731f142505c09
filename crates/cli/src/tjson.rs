//! JSON ↔ Thrift binary protocol, typed by an IDL ([`crate::idl`]).
//!
//! | Thrift | JSON |
//! |---|---|
//! | bool | `true` / `false` |
//! | byte, i16, i32, i64 | a number (an integer in a string is accepted) |
//! | double | a number; `"NaN"`, `"Infinity"`, `"-Infinity"` |
//! | string | a string |
//! | binary | a base64 string (padding optional when read) |
//! | uuid | `"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"` |
//! | enum | its name (a number is accepted; shown as a number when the IDL has no name for it) |
//! | struct, union, exception | an object keyed by field names; `null` leaves a field out |
//! | list, set | an array |
//! | map | an object when keys are strings, binary, integers, enums or bools (keys in their JSON form, as strings); else an array of `[key, value]` pairs (accepted for any map) |
//!
//! Decoding follows the IDL where the wire agrees with it. A field the IDL
//! does not have, or of another type than declared, is not dropped: it is
//! shown under `"#ID"` as its wire types alone tell (strings that are not
//! UTF-8 in base64, maps as pairs).

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use serde_json::{Map, Number, Value};

use crate::idl::{Field, Function, Schema, StructKind, Type};

const T_STOP: u8 = 0;
const T_BOOL: u8 = 2;
const T_BYTE: u8 = 3;
const T_DOUBLE: u8 = 4;
const T_I16: u8 = 6;
const T_I32: u8 = 8;
const T_I64: u8 = 10;
const T_STRING: u8 = 11;
const T_STRUCT: u8 = 12;
const T_MAP: u8 = 13;
const T_SET: u8 = 14;
const T_LIST: u8 = 15;
const T_UUID: u8 = 16;

/// Deepest nesting decoded (structs and containers).
const MAX_DEPTH: usize = 64;

/// Padding optional on input; written with it.
const BASE64_IN: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);
const BASE64_OUT: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The argument struct of a call to `function`: `args` is an object keyed
/// by argument names (`null` is no arguments). Arguments left out are not
/// sent, as a client that does not set them would.
pub fn encode_args(schema: &Schema, function: &Function, args: &Value) -> anyhow::Result<Vec<u8>> {
    let empty = Value::Object(Map::new());
    let args = if args.is_null() { &empty } else { args };
    let mut e = Encoder {
        schema,
        out: Vec::new(),
    };
    let owner = format!("{}()", function.name);
    e.fields(
        &owner,
        StructKind::Struct,
        &function.args,
        args,
        "arguments",
    )?;
    Ok(e.out)
}

/// Encodes `value` as a struct of type `schema.structs[index]`.
#[cfg(test)]
pub fn encode_struct(schema: &Schema, index: usize, value: &Value) -> anyhow::Result<Vec<u8>> {
    let mut e = Encoder {
        schema,
        out: Vec::new(),
    };
    e.value(&Type::Struct(index), value, "value")?;
    Ok(e.out)
}

/// How a call's `REPLY` ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The result (`null` for `void`).
    Success(Value),
    /// One of the exceptions the function declares.
    Declared {
        /// The exception's type, as the IDL names it.
        exception: String,
        /// The `throws` field it came in.
        field: String,
        value: Value,
    },
}

/// Reads the result struct of a `REPLY` to `function`.
pub fn decode_result(schema: &Schema, function: &Function, body: &[u8]) -> anyhow::Result<Outcome> {
    let mut fields: Vec<Field> = function.throws.clone();
    if let Some(ty) = &function.result {
        fields.insert(
            0,
            Field {
                id: 0,
                name: "success".into(),
                ty: ty.clone(),
                required: false,
            },
        );
    }
    let mut d = Decoder { schema, b: body };
    let result = d.fields(&fields, 0).context("the reply does not decode")?;
    let Value::Object(mut result) = result else {
        unreachable!("a struct decodes to an object");
    };
    if let Some(v) = result.remove("success") {
        return Ok(Outcome::Success(v));
    }
    for f in &function.throws {
        if let Some(v) = result.remove(&f.name) {
            let exception = match f.ty {
                Type::Struct(i) => schema.structs[i].name.clone(),
                _ => f.name.clone(),
            };
            return Ok(Outcome::Declared {
                exception,
                field: f.name.clone(),
                value: v,
            });
        }
    }
    if function.result.is_none() {
        return Ok(Outcome::Success(Value::Null));
    }
    bail!(
        "the reply has no result (MISSING_RESULT){}",
        if result.is_empty() {
            String::new()
        } else {
            format!(
                ", only fields the IDL does not declare: {}",
                Value::Object(result)
            )
        }
    )
}

/// Decodes a struct of type `schema.structs[index]`; every byte must be
/// used.
#[cfg(test)]
pub fn decode_struct(schema: &Schema, index: usize, bytes: &[u8]) -> anyhow::Result<Value> {
    let mut d = Decoder { schema, b: bytes };
    let v = d.value(&Type::Struct(index), 0)?;
    if !d.b.is_empty() {
        bail!("{} bytes after the struct", d.b.len());
    }
    Ok(v)
}

struct Encoder<'s> {
    schema: &'s Schema,
    out: Vec<u8>,
}

impl Encoder<'_> {
    fn fields(
        &mut self,
        owner: &str,
        kind: StructKind,
        fields: &[Field],
        v: &Value,
        at: &str,
    ) -> anyhow::Result<()> {
        let Value::Object(map) = v else {
            bail!(
                "{at}: {owner} takes an object keyed by field names, not {}",
                show(v)
            );
        };
        for key in map.keys() {
            if !fields.iter().any(|f| &f.name == key) {
                let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                bail!(
                    "{at}: {owner} has no field {key:?} (it has: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                );
            }
        }
        let mut set = 0;
        // In declaration order, whatever the order of the JSON.
        for f in fields {
            match map.get(&f.name) {
                None | Some(Value::Null) if f.required => {
                    bail!("{at}: {owner} requires field {}", f.name)
                }
                None | Some(Value::Null) => {}
                Some(value) => {
                    set += 1;
                    self.out.push(f.ty.wire());
                    self.out.extend_from_slice(&f.id.to_be_bytes());
                    self.value(&f.ty, value, &format!("{at}.{}", f.name))?;
                }
            }
        }
        if kind == StructKind::Union && set != 1 {
            bail!("{at}: union {owner} takes exactly one field, not {set}");
        }
        self.out.push(T_STOP);
        Ok(())
    }

    fn value(&mut self, ty: &Type, v: &Value, at: &str) -> anyhow::Result<()> {
        match ty {
            Type::Bool => match v {
                Value::Bool(b) => self.out.push(u8::from(*b)),
                _ => bail!("{at}: expected true or false, got {}", show(v)),
            },
            Type::Byte => self
                .out
                .push(int(v, i8::MIN.into(), i8::MAX.into(), at)? as i8 as u8),
            Type::I16 => {
                let n = int(v, i16::MIN.into(), i16::MAX.into(), at)? as i16;
                self.out.extend_from_slice(&n.to_be_bytes());
            }
            Type::I32 => {
                let n = int(v, i32::MIN.into(), i32::MAX.into(), at)? as i32;
                self.out.extend_from_slice(&n.to_be_bytes());
            }
            Type::I64 => {
                let n = int(v, i64::MIN, i64::MAX, at)?;
                self.out.extend_from_slice(&n.to_be_bytes());
            }
            Type::Double => {
                let d = double(v, at)?;
                self.out.extend_from_slice(&d.to_bits().to_be_bytes());
            }
            Type::String => match v {
                Value::String(s) => self.bytes(s.as_bytes()),
                _ => bail!("{at}: expected a string, got {}", show(v)),
            },
            Type::Binary => {
                let b = binary(v, at)?;
                self.bytes(&b);
            }
            Type::Uuid => {
                let u = uuid(v, at)?;
                self.out.extend_from_slice(&u);
            }
            Type::Enum(i) => {
                let n = self.enum_value(*i, v, at)?;
                self.out.extend_from_slice(&n.to_be_bytes());
            }
            Type::Struct(i) => {
                let def = &self.schema.structs[*i];
                self.fields(&def.name, def.kind, &def.fields, v, at)?;
            }
            Type::List(elem) | Type::Set(elem) => {
                let Value::Array(items) = v else {
                    bail!("{at}: expected an array, got {}", show(v));
                };
                self.out.push(elem.wire());
                self.len(items.len(), at)?;
                for (i, item) in items.iter().enumerate() {
                    self.value(elem, item, &format!("{at}[{i}]"))?;
                }
            }
            Type::Map(k, val) => {
                self.out.push(k.wire());
                self.out.push(val.wire());
                match v {
                    Value::Object(map) => {
                        self.len(map.len(), at)?;
                        for (key, item) in map {
                            let key_at = format!("{at}[{key:?}]");
                            let key_value = self.key_from_string(k, key, &key_at)?;
                            self.value(k, &key_value, &key_at)?;
                            self.value(val, item, &key_at)?;
                        }
                    }
                    Value::Array(pairs) => {
                        self.len(pairs.len(), at)?;
                        for (i, pair) in pairs.iter().enumerate() {
                            let pair_at = format!("{at}[{i}]");
                            let Some([key, item]) = pair.as_array().map(Vec::as_slice) else {
                                bail!(
                                    "{pair_at}: expected a [key, value] pair, got {}",
                                    show(pair)
                                );
                            };
                            self.value(k, key, &format!("{pair_at}[0]"))?;
                            self.value(val, item, &format!("{pair_at}[1]"))?;
                        }
                    }
                    _ => bail!(
                        "{at}: expected an object or an array of [key, value] pairs, got {}",
                        show(v)
                    ),
                }
            }
        }
        Ok(())
    }

    /// A map key written as a JSON object key, as the value its type takes.
    fn key_from_string(&self, ty: &Type, key: &str, at: &str) -> anyhow::Result<Value> {
        Ok(match ty {
            Type::String | Type::Binary | Type::Uuid | Type::Enum(_) => Value::String(key.into()),
            Type::Byte | Type::I16 | Type::I32 | Type::I64 | Type::Double => {
                Value::String(key.into())
            }
            Type::Bool => match key {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => bail!("{at}: a bool key is \"true\" or \"false\""),
            },
            _ => {
                bail!("{at}: keys of this map are not strings: give an array of [key, value] pairs")
            }
        })
    }

    fn enum_value(&self, index: usize, v: &Value, at: &str) -> anyhow::Result<i32> {
        let def = &self.schema.enums[index];
        if let Value::String(s) = v {
            if let Some(n) = def.value_of(s) {
                return Ok(n);
            }
            if s.trim().parse::<i64>().is_err() {
                let names: Vec<&str> = def.values.iter().map(|(n, _)| n.as_str()).collect();
                bail!(
                    "{at}: {} has no value {s:?} (it has: {})",
                    def.name,
                    names.join(", ")
                );
            }
        }
        Ok(int(v, i32::MIN.into(), i32::MAX.into(), at)? as i32)
    }

    fn len(&mut self, n: usize, at: &str) -> anyhow::Result<()> {
        let n = i32::try_from(n).map_err(|_| anyhow!("{at}: too many elements"))?;
        self.out.extend_from_slice(&n.to_be_bytes());
        Ok(())
    }

    fn bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.out.extend_from_slice(b);
    }
}

fn int(v: &Value, min: i64, max: i64, at: &str) -> anyhow::Result<i64> {
    // Wide enough for any JSON integer, so too large is "out of range".
    let n: Option<i128> = match v {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    let Some(n) = n else {
        bail!("{at}: expected an integer, got {}", show(v));
    };
    if n < i128::from(min) || n > i128::from(max) {
        bail!("{at}: {n} is out of range ({min} to {max})");
    }
    Ok(n as i64)
}

fn double(v: &Value, at: &str) -> anyhow::Result<f64> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| anyhow!("{at}: not a double: {n}")),
        Value::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            other => other
                .trim()
                .parse()
                .map_err(|_| anyhow!("{at}: expected a number, got {}", show(v))),
        },
        _ => bail!("{at}: expected a number, got {}", show(v)),
    }
}

fn binary(v: &Value, at: &str) -> anyhow::Result<Vec<u8>> {
    match v {
        Value::String(s) => BASE64_IN
            .decode(s.trim())
            .map_err(|e| anyhow!("{at}: binary is given in base64: {e}")),
        _ => bail!("{at}: expected a base64 string, got {}", show(v)),
    }
}

fn uuid(v: &Value, at: &str) -> anyhow::Result<[u8; 16]> {
    let bad = || {
        anyhow!(
            "{at}: expected a UUID (8-4-4-4-12 hex digits), got {}",
            show(v)
        )
    };
    let Value::String(s) = v else {
        return Err(bad());
    };
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A value as an error message shows it: short.
fn show(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

struct Decoder<'s, 'b> {
    schema: &'s Schema,
    b: &'b [u8],
}

impl<'b> Decoder<'_, 'b> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'b [u8]> {
        if self.b.len() < n {
            bail!("truncated: {n} bytes needed, {} left", self.b.len());
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }

    fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn i16(&mut self) -> anyhow::Result<i16> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn i32(&mut self) -> anyhow::Result<i32> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn i64(&mut self) -> anyhow::Result<i64> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A length or size; each element takes at least one byte, so a size
    /// beyond what is left is refused before anything is allocated.
    fn len(&mut self) -> anyhow::Result<usize> {
        let n = self.i32()?;
        let n = usize::try_from(n).map_err(|_| anyhow!("negative size {n}"))?;
        if n > self.b.len() {
            bail!("size {n} beyond the {} bytes left", self.b.len());
        }
        Ok(n)
    }

    fn bytes(&mut self) -> anyhow::Result<&'b [u8]> {
        let n = self.len()?;
        self.take(n)
    }

    /// A struct whose fields are `fields`, as an object.
    fn fields(&mut self, fields: &[Field], depth: usize) -> anyhow::Result<Value> {
        let mut out = Map::new();
        loop {
            let wire = self.u8()?;
            if wire == T_STOP {
                return Ok(Value::Object(out));
            }
            let id = self.i16()?;
            match fields.iter().find(|f| f.id == id) {
                Some(f) if f.ty.wire() == wire => {
                    let v = self
                        .value(&f.ty, depth + 1)
                        .with_context(|| format!("field {}", f.name))?;
                    out.insert(f.name.clone(), v);
                }
                _ => {
                    let v = self
                        .wire_value(wire, depth + 1)
                        .with_context(|| format!("field #{id}"))?;
                    out.insert(format!("#{id}"), v);
                }
            }
        }
    }

    fn value(&mut self, ty: &Type, depth: usize) -> anyhow::Result<Value> {
        if depth > MAX_DEPTH {
            bail!("nested deeper than {MAX_DEPTH}");
        }
        Ok(match ty {
            Type::Bool => Value::Bool(self.u8()? != 0),
            Type::Byte => (self.u8()? as i8).into(),
            Type::I16 => self.i16()?.into(),
            Type::I32 => self.i32()?.into(),
            Type::I64 => self.i64()?.into(),
            Type::Double => double_json(f64::from_bits(self.i64()? as u64)),
            Type::String => Value::String(String::from_utf8_lossy(self.bytes()?).into_owned()),
            Type::Binary => Value::String(BASE64_OUT.encode(self.bytes()?)),
            Type::Uuid => Value::String(uuid_text(self.take(16)?)),
            Type::Enum(i) => {
                let n = self.i32()?;
                match self.schema.enums[*i].name_of(n) {
                    Some(name) => Value::String(name.into()),
                    None => n.into(),
                }
            }
            Type::Struct(i) => {
                let fields = &self.schema.structs[*i].fields;
                self.fields(fields, depth)?
            }
            Type::List(elem) | Type::Set(elem) => {
                let wire = self.u8()?;
                let n = self.len()?;
                let mut items = Vec::with_capacity(n);
                for i in 0..n {
                    let v = if wire == elem.wire() {
                        self.value(elem, depth + 1)
                    } else {
                        self.wire_value(wire, depth + 1)
                    };
                    items.push(v.with_context(|| format!("element {i}"))?);
                }
                Value::Array(items)
            }
            Type::Map(k, v) => {
                let (kw, vw) = (self.u8()?, self.u8()?);
                let n = self.len()?;
                let typed = kw == k.wire() && vw == v.wire();
                let as_object = typed && keys_are_strings(k);
                let mut object = Map::new();
                let mut pairs = Vec::new();
                for i in 0..n {
                    let (key, value) = if typed {
                        (self.value(k, depth + 1), self.value(v, depth + 1))
                    } else {
                        (
                            self.wire_value(kw, depth + 1),
                            self.wire_value(vw, depth + 1),
                        )
                    };
                    let (key, value) = (
                        key.with_context(|| format!("key {i}"))?,
                        value.with_context(|| format!("value {i}"))?,
                    );
                    if as_object {
                        let key = match key {
                            Value::String(s) => s,
                            other => other.to_string(),
                        };
                        object.insert(key, value);
                    } else {
                        pairs.push(Value::Array(vec![key, value]));
                    }
                }
                if as_object {
                    Value::Object(object)
                } else {
                    Value::Array(pairs)
                }
            }
        })
    }

    /// A value the IDL does not describe, as its wire types tell.
    fn wire_value(&mut self, wire: u8, depth: usize) -> anyhow::Result<Value> {
        if depth > MAX_DEPTH {
            bail!("nested deeper than {MAX_DEPTH}");
        }
        Ok(match wire {
            T_BOOL => Value::Bool(self.u8()? != 0),
            T_BYTE => (self.u8()? as i8).into(),
            T_I16 => self.i16()?.into(),
            T_I32 => self.i32()?.into(),
            T_I64 => self.i64()?.into(),
            T_DOUBLE => double_json(f64::from_bits(self.i64()? as u64)),
            T_STRING => {
                let b = self.bytes()?;
                match std::str::from_utf8(b) {
                    Ok(s) => Value::String(s.into()),
                    Err(_) => Value::String(BASE64_OUT.encode(b)),
                }
            }
            T_UUID => Value::String(uuid_text(self.take(16)?)),
            T_STRUCT => self.fields(&[], depth)?,
            T_LIST | T_SET => {
                let elem = self.u8()?;
                let n = self.len()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.wire_value(elem, depth + 1)?);
                }
                Value::Array(items)
            }
            T_MAP => {
                let (kw, vw) = (self.u8()?, self.u8()?);
                let n = self.len()?;
                let mut pairs = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = self.wire_value(kw, depth + 1)?;
                    let v = self.wire_value(vw, depth + 1)?;
                    pairs.push(Value::Array(vec![k, v]));
                }
                Value::Array(pairs)
            }
            other => bail!("unknown wire type {other}"),
        })
    }
}

/// Whether a map with keys of `ty` is shown as a JSON object.
fn keys_are_strings(ty: &Type) -> bool {
    matches!(
        ty,
        Type::String
            | Type::Binary
            | Type::Byte
            | Type::I16
            | Type::I32
            | Type::I64
            | Type::Enum(_)
            | Type::Bool
    )
}

fn double_json(d: f64) -> Value {
    match Number::from_f64(d) {
        Some(n) => Value::Number(n),
        None if d.is_nan() => Value::String("NaN".into()),
        None if d > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

fn uuid_text(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use thrift::protocol::{
        TBinaryOutputProtocol, TFieldIdentifier, TListIdentifier, TMapIdentifier, TOutputProtocol,
        TSetIdentifier, TStructIdentifier, TType,
    };

    use super::*;

    const IDL: &str = r#"
enum Color { RED = 1, GREEN, BLUE = 10 }
typedef map<string, list<i32>> Scores
struct Point { 1: required double x, 2: optional double y }
union Value { 1: string s, 2: i64 n }
exception NotFound { 1: string message, 2: i32 code }
struct Item {
  1: required string name,
  2: Color color,
  3: set<string> tags,
  4: Scores scores,
  5: optional binary blob,
  6: map<i64, Point> points,
  7: bool ok,
  8: byte b,
  9: i16 s,
  10: list<Value> values,
  11: map<Color, double> weights,
  12: map<Point, string> labels,
}
service Inventory {
  Item put(1: Item item, 2: i32 copies),
  void touch(1: string name) throws (1: NotFound nf),
  i64 count() throws (1: NotFound nf),
  oneway void forget(1: string name)
}
"#;

    fn schema() -> Schema {
        Schema::parse(IDL).unwrap()
    }

    fn index(schema: &Schema, name: &str) -> usize {
        schema.structs.iter().position(|s| s.name == name).unwrap()
    }

    fn item_json() -> Value {
        json!({
            "name": "hammer",
            "color": "BLUE",
            "tags": ["tool", "steel"],
            "scores": {"a": [1, -2], "b": []},
            "blob": "AAEC/w==",
            "points": {"-7": {"x": 1.5}, "3": {"x": 0.0, "y": -2.25}},
            "ok": true,
            "b": -128,
            "s": 32767,
            "values": [{"s": "x"}, {"n": 9007199254740993i64}],
            "weights": {"GREEN": 0.5},
            "labels": [[{"x": 1.0}, "one"]],
        })
    }

    /// The same struct written by the Apache Thrift library, field by field.
    fn item_by_thrift() -> Vec<u8> {
        let mut out = Vec::new();
        let mut p = TBinaryOutputProtocol::new(&mut out, true);
        let field = |name: &str, t: TType, id: i16| TFieldIdentifier::new(name, t, id);
        p.write_struct_begin(&TStructIdentifier::new("Item"))
            .unwrap();
        p.write_field_begin(&field("name", TType::String, 1))
            .unwrap();
        p.write_string("hammer").unwrap();
        p.write_field_begin(&field("color", TType::I32, 2)).unwrap();
        p.write_i32(10).unwrap();
        p.write_field_begin(&field("tags", TType::Set, 3)).unwrap();
        p.write_set_begin(&TSetIdentifier::new(TType::String, 2))
            .unwrap();
        p.write_string("tool").unwrap();
        p.write_string("steel").unwrap();
        p.write_field_begin(&field("scores", TType::Map, 4))
            .unwrap();
        p.write_map_begin(&TMapIdentifier::new(TType::String, TType::List, 2))
            .unwrap();
        p.write_string("a").unwrap();
        p.write_list_begin(&TListIdentifier::new(TType::I32, 2))
            .unwrap();
        p.write_i32(1).unwrap();
        p.write_i32(-2).unwrap();
        p.write_string("b").unwrap();
        p.write_list_begin(&TListIdentifier::new(TType::I32, 0))
            .unwrap();
        p.write_field_begin(&field("blob", TType::String, 5))
            .unwrap();
        p.write_bytes(&[0, 1, 2, 255]).unwrap();
        p.write_field_begin(&field("points", TType::Map, 6))
            .unwrap();
        p.write_map_begin(&TMapIdentifier::new(TType::I64, TType::Struct, 2))
            .unwrap();
        // serde_json orders object keys: "-7" before "3".
        p.write_i64(-7).unwrap();
        p.write_field_begin(&field("x", TType::Double, 1)).unwrap();
        p.write_double(1.5).unwrap();
        p.write_field_stop().unwrap();
        p.write_i64(3).unwrap();
        p.write_field_begin(&field("x", TType::Double, 1)).unwrap();
        p.write_double(0.0).unwrap();
        p.write_field_begin(&field("y", TType::Double, 2)).unwrap();
        p.write_double(-2.25).unwrap();
        p.write_field_stop().unwrap();
        p.write_field_begin(&field("ok", TType::Bool, 7)).unwrap();
        p.write_bool(true).unwrap();
        p.write_field_begin(&field("b", TType::I08, 8)).unwrap();
        p.write_i8(-128).unwrap();
        p.write_field_begin(&field("s", TType::I16, 9)).unwrap();
        p.write_i16(32767).unwrap();
        p.write_field_begin(&field("values", TType::List, 10))
            .unwrap();
        p.write_list_begin(&TListIdentifier::new(TType::Struct, 2))
            .unwrap();
        p.write_field_begin(&field("s", TType::String, 1)).unwrap();
        p.write_string("x").unwrap();
        p.write_field_stop().unwrap();
        p.write_field_begin(&field("n", TType::I64, 2)).unwrap();
        p.write_i64(9007199254740993).unwrap();
        p.write_field_stop().unwrap();
        p.write_field_begin(&field("weights", TType::Map, 11))
            .unwrap();
        p.write_map_begin(&TMapIdentifier::new(TType::I32, TType::Double, 1))
            .unwrap();
        p.write_i32(2).unwrap();
        p.write_double(0.5).unwrap();
        p.write_field_begin(&field("labels", TType::Map, 12))
            .unwrap();
        p.write_map_begin(&TMapIdentifier::new(TType::Struct, TType::String, 1))
            .unwrap();
        p.write_field_begin(&field("x", TType::Double, 1)).unwrap();
        p.write_double(1.0).unwrap();
        p.write_field_stop().unwrap();
        p.write_string("one").unwrap();
        p.write_field_stop().unwrap();
        out
    }

    #[test]
    fn encodes_as_apache_thrift_does_and_decodes_back() {
        let schema = schema();
        let item = index(&schema, "Item");
        let bytes = encode_struct(&schema, item, &item_json()).unwrap();
        assert_eq!(bytes, item_by_thrift());
        let back = decode_struct(&schema, item, &bytes).unwrap();
        assert_eq!(back, item_json());
    }

    #[test]
    fn json_alternatives_are_accepted() {
        let schema = schema();
        let item = index(&schema, "Item");
        let mut alt = item_json();
        alt["color"] = json!(10);
        alt["blob"] = json!("AAEC/w");
        alt["s"] = json!("32767");
        alt["points"] = json!([[-7, {"x": 1.5}], ["3", {"x": 0, "y": -2.25}]]);
        alt["tags"] = json!(["tool", "steel"]);
        alt["weights"] = json!([["GREEN", 0.5]]);
        alt["extra_null"] = Value::Null;
        let err = encode_struct(&schema, item, &alt).unwrap_err();
        assert!(err.to_string().contains("no field \"extra_null\""), "{err}");
        alt.as_object_mut().unwrap().remove("extra_null");
        alt["values"][0]["n"] = Value::Null;
        assert_eq!(
            encode_struct(&schema, item, &alt).unwrap(),
            item_by_thrift()
        );
    }

    #[test]
    fn doubles_that_json_cannot_hold_are_strings() {
        let schema = schema();
        let point = index(&schema, "Point");
        for (text, check) in [
            ("NaN", f64::is_nan as fn(f64) -> bool),
            ("Infinity", |d| d == f64::INFINITY),
            ("-Infinity", |d| d == f64::NEG_INFINITY),
        ] {
            let bytes = encode_struct(&schema, point, &json!({"x": text})).unwrap();
            assert!(check(f64::from_bits(u64::from_be_bytes(
                bytes[3..11].try_into().unwrap()
            ))));
            let back = decode_struct(&schema, point, &bytes).unwrap();
            assert_eq!(back, json!({"x": text}));
        }
    }

    #[test]
    fn mistakes_name_the_place_and_the_expectation() {
        let schema = schema();
        let item = index(&schema, "Item");
        let cases = [
            (json!({"color": "RED"}), "value: Item requires field name"),
            (json!({"name": 5}), "value.name: expected a string, got 5"),
            (
                json!({"name": "x", "s": 40000}),
                "value.s: 40000 is out of range (-32768 to 32767)",
            ),
            (
                json!({"name": "x", "b": 1.5}),
                "value.b: expected an integer, got 1.5",
            ),
            (
                json!({"name": "x", "color": "PINK"}),
                "value.color: Color has no value \"PINK\" (it has: RED, GREEN, BLUE)",
            ),
            (
                json!({"name": "x", "tags": "a"}),
                "value.tags: expected an array, got \"a\"",
            ),
            (
                json!({"name": "x", "scores": {"a": [1, "z"]}}),
                "value.scores[\"a\"][1]: expected an integer",
            ),
            (
                json!({"name": "x", "blob": "!!"}),
                "value.blob: binary is given in base64",
            ),
            (
                json!({"name": "x", "values": [{"s": "a", "n": 1}]}),
                "value.values[0]: union Value takes exactly one field, not 2",
            ),
            (
                json!({"name": "x", "labels": {"a": "b"}}),
                "give an array of [key, value] pairs",
            ),
            (
                json!({"name": "x", "points": [[1]]}),
                "value.points[0]: expected a [key, value] pair",
            ),
            (
                json!({"name": "x", "nmae": 1}),
                "Item has no field \"nmae\" (it has: name, color",
            ),
            (
                json!([1]),
                "value: Item takes an object keyed by field names, not [1]",
            ),
        ];
        for (input, message) in cases {
            let err = encode_struct(&schema, item, &input)
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{input}: {err}");
        }
    }

    fn function<'s>(schema: &'s Schema, name: &str) -> &'s Function {
        schema.services[0].function(name).unwrap()
    }

    #[test]
    fn arguments_are_a_struct_of_the_named_arguments() {
        let schema = schema();
        let put = function(&schema, "put");
        let args = encode_args(&schema, put, &json!({"copies": 3, "item": {"name": "n"}})).unwrap();
        let mut expected = vec![12, 0, 1, 11, 0, 1, 0, 0, 0, 1, b'n', 0];
        expected.extend_from_slice(&[8, 0, 2, 0, 0, 0, 3, 0]);
        assert_eq!(args, expected);
        // Arguments may be left out; none at all is an empty struct.
        assert_eq!(encode_args(&schema, put, &json!({})).unwrap(), vec![0]);
        assert_eq!(encode_args(&schema, put, &Value::Null).unwrap(), vec![0]);
        let err = encode_args(&schema, put, &json!({"itme": {}})).unwrap_err();
        assert!(
            err.to_string()
                .contains("put() has no field \"itme\" (it has: item, copies)"),
            "{err}"
        );
    }

    #[test]
    fn results_decode_to_success_or_the_declared_exception() {
        let schema = schema();
        let count = function(&schema, "count");
        let ok = [10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 42, 0];
        assert_eq!(
            decode_result(&schema, count, &ok).unwrap(),
            Outcome::Success(json!(42))
        );
        let mut raised = vec![12, 0, 1, 11, 0, 1, 0, 0, 0, 4];
        raised.extend_from_slice(b"gone");
        raised.extend_from_slice(&[8, 0, 2, 0, 0, 1, 0x94, 0, 0]);
        assert_eq!(
            decode_result(&schema, count, &raised).unwrap(),
            Outcome::Declared {
                exception: "NotFound".into(),
                field: "nf".into(),
                value: json!({"message": "gone", "code": 404}),
            }
        );
        let touch = function(&schema, "touch");
        assert_eq!(
            decode_result(&schema, touch, &[0]).unwrap(),
            Outcome::Success(Value::Null)
        );
        let err = decode_result(&schema, count, &[0]).unwrap_err();
        assert!(err.to_string().contains("MISSING_RESULT"), "{err}");
        let err = decode_result(&schema, count, &[10, 0, 0, 0, 0]).unwrap_err();
        assert!(format!("{err:#}").contains("truncated"), "{err:#}");
    }

    #[test]
    fn what_the_idl_does_not_describe_is_shown_by_wire_type() {
        let schema = schema();
        let point = index(&schema, "Point");
        // x as an i32 (not the declared double), an unknown field 9 holding
        // a map<string, list<binary>> with bytes that are not UTF-8.
        let mut b = vec![8, 0, 1, 0, 0, 0, 7];
        b.extend_from_slice(&[13, 0, 9, 11, 15, 0, 0, 0, 1]);
        b.extend_from_slice(&[0, 0, 0, 1, b'k', 11, 0, 0, 0, 1, 0, 0, 0, 2, 0xff, 0xfe]);
        b.push(0);
        assert_eq!(
            decode_struct(&schema, point, &b).unwrap(),
            json!({"#1": 7, "#9": [["k", ["//4="]]]})
        );
    }

    #[test]
    fn hostile_sizes_and_depths_are_refused() {
        let schema = schema();
        let item = index(&schema, "Item");
        // tags: a set claiming 2^31-1 strings.
        let b = [14, 0, 3, 11, 0x7f, 0xff, 0xff, 0xff];
        let err = decode_struct(&schema, item, &b).unwrap_err();
        assert!(format!("{err:#}").contains("beyond the"), "{err:#}");
        let mut deep = Vec::new();
        for _ in 0..100 {
            deep.extend_from_slice(&[12, 0, 99]);
        }
        let err = decode_struct(&schema, item, &deep).unwrap_err();
        assert!(format!("{err:#}").contains("nested deeper"), "{err:#}");
    }

    #[test]
    fn uuids_are_hyphenated_hex() {
        let schema = Schema::parse("struct U { 1: uuid id, 2: map<uuid, i32> m }").unwrap();
        let v = json!({"id": "00112233-4455-6677-8899-aabbccddeeff", "m": [["00112233445566778899AABBCCDDEEFF", 1]]});
        let bytes = encode_struct(&schema, 0, &v).unwrap();
        assert_eq!(&bytes[..3], &[16, 0, 1]);
        assert_eq!(
            bytes[3..19],
            [
                0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff
            ]
        );
        let back = decode_struct(&schema, 0, &bytes).unwrap();
        assert_eq!(
            back,
            json!({"id": "00112233-4455-6677-8899-aabbccddeeff", "m": [["00112233-4455-6677-8899-aabbccddeeff", 1]]})
        );
        assert!(encode_struct(&schema, 0, &json!({"id": "xyz"})).is_err());
    }
}
