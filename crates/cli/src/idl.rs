//! A Thrift IDL file and the files it includes, parsed (by
//! `pilota-thrift-parser`) and resolved into what a call needs: every
//! struct, union, exception and enum by name, typedefs replaced by what
//! they name, and each service's functions (those of the services it
//! extends included) with their argument, result and exception types.
//!
//! Names follow the Thrift compiler: a file's own definitions are used
//! bare (`Item`), an included file's through its file name without
//! `.thrift` (`shared.Point` after `include "shared.thrift"`). Includes
//! are looked up beside the including file, then in the current directory.
//! Constants and default values are not needed to make a call and are
//! not read.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use pilota_thrift_parser as ast;

/// A field or element type with typedefs resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Type {
    Bool,
    Byte,
    I16,
    I32,
    I64,
    Double,
    String,
    Binary,
    Uuid,
    List(Box<Type>),
    Set(Box<Type>),
    Map(Box<Type>, Box<Type>),
    /// An index into [`Schema::enums`].
    Enum(usize),
    /// An index into [`Schema::structs`].
    Struct(usize),
}

impl Type {
    /// The binary protocol's type byte.
    pub fn wire(&self) -> u8 {
        match self {
            Type::Bool => 2,
            Type::Byte => 3,
            Type::Double => 4,
            Type::I16 => 6,
            Type::I32 | Type::Enum(_) => 8,
            Type::I64 => 10,
            Type::String | Type::Binary => 11,
            Type::Struct(_) => 12,
            Type::Map(..) => 13,
            Type::Set(_) => 14,
            Type::List(_) => 15,
            Type::Uuid => 16,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StructKind {
    Struct,
    Union,
    Exception,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub id: i16,
    pub name: String,
    pub ty: Type,
    /// Declared `required` (a struct field; arguments never are).
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StructDef {
    /// As the root file would name it (`Item`, `shared.Point`).
    pub name: String,
    pub kind: StructKind,
    pub fields: Vec<Field>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnumDef {
    pub name: String,
    pub values: Vec<(String, i32)>,
}

impl EnumDef {
    pub fn value_of(&self, name: &str) -> Option<i32> {
        self.values.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }

    pub fn name_of(&self, value: i32) -> Option<&str> {
        self.values
            .iter()
            .find(|&&(_, v)| v == value)
            .map(|(n, _)| n.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    pub oneway: bool,
    /// `None` for `void`.
    pub result: Option<Type>,
    pub args: Vec<Field>,
    pub throws: Vec<Field>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// Its own functions, then those it extends (nearest first).
    pub functions: Vec<Function>,
}

impl Service {
    pub fn function(&self, name: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.name == name)
    }
}

/// Everything defined in a file and the files it includes.
#[derive(Debug, Default)]
pub struct Schema {
    pub structs: Vec<StructDef>,
    pub enums: Vec<EnumDef>,
    /// The root file's services (those of included files are only reached
    /// through `extends`).
    pub services: Vec<Service>,
}

impl Schema {
    /// Reads `path` and every file it includes.
    pub fn load(path: &Path) -> anyhow::Result<Schema> {
        let mut files = Files::default();
        files.read(path)?;
        Resolver::new(&files)?.finish()
    }

    /// Parses IDL text with no includes.
    #[cfg(test)]
    pub fn parse(text: &str) -> anyhow::Result<Schema> {
        let mut files = Files::default();
        files.add(None, text)?;
        Resolver::new(&files)?.finish()
    }

    /// The service to call `method` on: the one named `wanted`, else the
    /// one whose name is `service` (the name the proxy routes by; case and
    /// `_` ignored), else the only one that has `method`.
    pub fn pick_service(
        &self,
        service: &str,
        method: &str,
        wanted: Option<&str>,
    ) -> anyhow::Result<&Service> {
        let names = || {
            self.services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(wanted) = wanted {
            return self
                .services
                .iter()
                .find(|s| s.name == wanted)
                .ok_or_else(|| anyhow!("no service {wanted} in the IDL (it has: {})", names()));
        }
        if self.services.is_empty() {
            bail!("the IDL defines no service");
        }
        let fold = |s: &str| s.replace('_', "").to_lowercase();
        if let Some(s) = self
            .services
            .iter()
            .find(|s| fold(&s.name) == fold(service))
        {
            return Ok(s);
        }
        let having: Vec<&Service> = self
            .services
            .iter()
            .filter(|s| s.function(method).is_some())
            .collect();
        match having.as_slice() {
            [one] => Ok(one),
            [] => bail!("no service of the IDL has a method {method} (services: {})", names()),
            many => bail!(
                "several services of the IDL have a method {method} ({}): name one with --idl-service",
                many.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// The parsed files, the root first.
#[derive(Default)]
struct Files {
    files: Vec<ParsedFile>,
}

struct ParsedFile {
    path: PathBuf,
    ast: ast::File,
    /// Include scope (file stem) → index in `Files::files`.
    includes: HashMap<String, usize>,
}

impl Files {
    /// Reads `path` and, depth first, what it includes; returns its index.
    /// A file is read once, so files may include each other.
    fn read(&mut self, path: &Path) -> anyhow::Result<usize> {
        let canonical = path
            .canonicalize()
            .with_context(|| format!("cannot read {}", path.display()))?;
        if let Some(i) = self.files.iter().position(|f| f.path == canonical) {
            return Ok(i);
        }
        let text = std::fs::read_to_string(&canonical)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let index = self.add(Some(canonical.clone()), &text)?;
        let includes: Vec<String> = self.files[index]
            .ast
            .items
            .iter()
            .filter_map(|item| match item {
                ast::Item::Include(i) => Some(i.path.0.clone()),
                _ => None,
            })
            .collect();
        let dir = canonical.parent().unwrap_or(Path::new("."));
        for include in includes {
            let beside = dir.join(&include);
            let found = if beside.exists() {
                beside
            } else {
                PathBuf::from(&include)
            };
            let i = self
                .read(&found)
                .with_context(|| format!("include \"{include}\" in {}", path.display()))?;
            let scope = Path::new(&include)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            self.files[index].includes.insert(scope, i);
        }
        Ok(index)
    }

    /// Parses `text`, read from `path` (`None`: given inline).
    fn add(&mut self, path: Option<PathBuf>, text: &str) -> anyhow::Result<usize> {
        let source = match &path {
            Some(p) => ast::FileSource::new_with_path(p.clone(), text)
                .map_err(|e| anyhow!("cannot read {}: {e}", p.display()))?,
            None => ast::FileSource::new(text),
        };
        // The summary is one line with the position; the full report
        // (source excerpts) is too long for a command's error.
        let parsed = ast::FileParser::new(source).parse().map_err(|e| match e {
            ast::Error::Syntax { summary, .. } => anyhow!("{summary}"),
            other => anyhow!("{other}"),
        })?;
        self.files.push(ParsedFile {
            path: path.unwrap_or_else(|| PathBuf::from("inline.thrift")),
            ast: parsed,
            includes: HashMap::new(),
        });
        Ok(self.files.len() - 1)
    }
}

/// A named definition of one file.
#[derive(Clone, Copy)]
enum Def<'a> {
    Struct(usize),
    Enum(usize),
    Typedef(&'a ast::Type),
    Service(&'a ast::Service),
}

struct Resolver<'a> {
    files: &'a Files,
    /// Per file: name → definition.
    defs: Vec<BTreeMap<String, Def<'a>>>,
    schema: Schema,
}

impl<'a> Resolver<'a> {
    /// Names every definition; structs and enums get their index.
    fn new(files: &'a Files) -> anyhow::Result<Resolver<'a>> {
        let mut defs = Vec::new();
        let mut schema = Schema::default();
        for (index, file) in files.files.iter().enumerate() {
            let prefix = if index == 0 {
                String::new()
            } else {
                let stem = file.path.file_stem().unwrap_or_default().to_string_lossy();
                format!("{stem}.")
            };
            let mut names = BTreeMap::new();
            for item in &file.ast.items {
                let (name, def) = match item {
                    ast::Item::Struct(s) => (s.name.as_str(), None),
                    ast::Item::Union(s) => (s.name.as_str(), None),
                    ast::Item::Exception(s) => (s.name.as_str(), None),
                    ast::Item::Enum(e) => {
                        let mut values = Vec::new();
                        let mut next = 0i64;
                        for v in &e.values {
                            let value = v.value.map_or(next, |c| c.0);
                            let value = i32::try_from(value).map_err(|_| {
                                anyhow!(
                                    "enum {}: {} = {value} is not an i32",
                                    e.name.as_str(),
                                    v.name.as_str()
                                )
                            })?;
                            values.push((v.name.to_string(), value));
                            next = i64::from(value) + 1;
                        }
                        schema.enums.push(EnumDef {
                            name: format!("{prefix}{}", e.name.as_str()),
                            values,
                        });
                        (e.name.as_str(), Some(Def::Enum(schema.enums.len() - 1)))
                    }
                    ast::Item::Typedef(t) => (t.alias.as_str(), Some(Def::Typedef(&t.r#type))),
                    ast::Item::Service(s) => (s.name.as_str(), Some(Def::Service(s))),
                    _ => continue,
                };
                let def = match def {
                    Some(d) => d,
                    None => {
                        let (kind, like) = match item {
                            ast::Item::Struct(s) => (StructKind::Struct, &s.struct_like),
                            ast::Item::Union(s) => (StructKind::Union, &s.struct_like),
                            ast::Item::Exception(s) => (StructKind::Exception, &s.struct_like),
                            _ => unreachable!("only struct-likes are left"),
                        };
                        schema.structs.push(StructDef {
                            name: format!("{prefix}{}", like.name.as_str()),
                            kind,
                            fields: Vec::new(),
                        });
                        Def::Struct(schema.structs.len() - 1)
                    }
                };
                if names.insert(name.to_string(), def).is_some() {
                    bail!("{} defines {name} twice", file.path.display());
                }
            }
            defs.push(names);
        }
        Ok(Resolver {
            files,
            defs,
            schema,
        })
    }

    /// Fills in struct fields and the root file's services.
    fn finish(mut self) -> anyhow::Result<Schema> {
        for (index, file) in self.files.files.iter().enumerate() {
            for item in &file.ast.items {
                let like = match item {
                    ast::Item::Struct(s) => &s.struct_like,
                    ast::Item::Union(s) => &s.struct_like,
                    ast::Item::Exception(s) => &s.struct_like,
                    _ => continue,
                };
                let Some(Def::Struct(i)) = self.defs[index].get(like.name.as_str()).copied() else {
                    unreachable!("every struct was named");
                };
                let fields = self
                    .fields(index, &like.fields, false)
                    .with_context(|| format!("in {}", self.schema.structs[i].name))?;
                self.schema.structs[i].fields = fields;
            }
        }
        let root_services: Vec<&ast::Service> = self.files.files[0]
            .ast
            .items
            .iter()
            .filter_map(|item| match item {
                ast::Item::Service(s) => Some(s),
                _ => None,
            })
            .collect();
        for s in root_services {
            let service = self.service(0, s, 0)?;
            self.schema.services.push(service);
        }
        Ok(self.schema)
    }

    fn service(&self, file: usize, s: &ast::Service, depth: usize) -> anyhow::Result<Service> {
        if depth > 32 {
            bail!("service {} extends too deep (a cycle?)", s.name.as_str());
        }
        let mut functions = Vec::new();
        for f in &s.functions {
            let context = || format!("in {}.{}", s.name.as_str(), f.name.as_str());
            let result = match &f.result_type.0 {
                ast::Ty::Void => None,
                _ => Some(self.ty(file, &f.result_type, 0).with_context(context)?),
            };
            functions.push(Function {
                name: f.name.to_string(),
                oneway: f.oneway,
                result,
                args: self
                    .fields(file, &f.arguments, true)
                    .with_context(context)?,
                throws: self.fields(file, &f.throws, true).with_context(context)?,
            });
        }
        if let Some(parent) = &s.extends {
            let (pfile, def) = self.lookup(file, parent)?;
            let Def::Service(p) = def else {
                bail!(
                    "{} extends {}, which is not a service",
                    s.name.as_str(),
                    dotted(parent)
                );
            };
            let parent = self.service(pfile, p, depth + 1)?;
            for f in parent.functions {
                if !functions.iter().any(|g| g.name == f.name) {
                    functions.push(f);
                }
            }
        }
        Ok(Service {
            name: s.name.to_string(),
            functions,
        })
    }

    fn fields(&self, file: usize, fields: &[ast::Field], args: bool) -> anyhow::Result<Vec<Field>> {
        let mut out: Vec<Field> = Vec::with_capacity(fields.len());
        for f in fields {
            let id = i16::try_from(f.id)
                .map_err(|_| anyhow!("field {}: id {} out of range", f.name.as_str(), f.id))?;
            if out.iter().any(|g| g.id == id || g.name == f.name.as_str()) {
                bail!("field {} ({id}) is declared twice", f.name.as_str());
            }
            let ty = self
                .ty(file, &f.ty, 0)
                .with_context(|| format!("field {}", f.name.as_str()))?;
            out.push(Field {
                id,
                name: f.name.to_string(),
                ty,
                required: !args && f.attribute == ast::Attribute::Required,
            });
        }
        Ok(out)
    }

    fn ty(&self, file: usize, t: &ast::Type, depth: usize) -> anyhow::Result<Type> {
        if depth > 64 {
            bail!("typedefs nest too deep (a cycle?)");
        }
        let inner = |t: &ast::Type| self.ty(file, t, depth + 1).map(Box::new);
        Ok(match &t.0 {
            ast::Ty::Void => bail!("void is only a result type"),
            ast::Ty::Bool => Type::Bool,
            ast::Ty::Byte | ast::Ty::I8 => Type::Byte,
            ast::Ty::I16 => Type::I16,
            ast::Ty::I32 => Type::I32,
            ast::Ty::I64 => Type::I64,
            ast::Ty::Double => Type::Double,
            ast::Ty::String => Type::String,
            ast::Ty::Binary => Type::Binary,
            ast::Ty::Uuid => Type::Uuid,
            ast::Ty::List { value, .. } => Type::List(inner(value)?),
            ast::Ty::Set { value, .. } => Type::Set(inner(value)?),
            ast::Ty::Map { key, value, .. } => Type::Map(inner(key)?, inner(value)?),
            ast::Ty::Path(path) => match self.lookup(file, path)? {
                (_, Def::Struct(i)) => Type::Struct(i),
                (_, Def::Enum(i)) => Type::Enum(i),
                (f, Def::Typedef(t)) => self.ty(f, t, depth + 1)?,
                (_, Def::Service(_)) => bail!("{} is a service, not a type", dotted(path)),
            },
        })
    }

    /// What `path` names from `file`: a definition of its own (`Name`) or
    /// of a file it includes (`scope.Name`).
    fn lookup(&self, file: usize, path: &ast::Path) -> anyhow::Result<(usize, Def<'a>)> {
        let segments: Vec<&str> = path.segments.iter().map(|s| s.as_str()).collect();
        let (target, name) = match segments.as_slice() {
            [name] => (file, *name),
            [scope, name] => {
                let f = self.files.files[file].includes.get(*scope).copied();
                (
                    f.ok_or_else(|| {
                        anyhow!("unknown type {} (no include named {scope})", dotted(path))
                    })?,
                    *name,
                )
            }
            _ => bail!("unknown type {}", dotted(path)),
        };
        self.defs[target]
            .get(name)
            .map(|&d| (target, d))
            .ok_or_else(|| anyhow!("unknown type {}", dotted(path)))
    }
}

fn dotted(path: &ast::Path) -> String {
    path.segments
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARED: &str = r#"
namespace rs shared
typedef i64 Timestamp
enum Color { RED = 1, GREEN, BLUE = 10, BLACK }
struct Point { 1: required double x; 2: optional double y = 0.5 }
service Base { void ping() }
"#;

    const MAIN: &str = r#"
include "shared.thrift"
namespace py inv
typedef list<shared.Point> Path
typedef map<i32, string> Names
union Value { 1: string s, 2: i64 n }
exception NotFound { 1: string message, 2: i32 code } (annot = "x")
/** An item. */
struct Item {
  1: required string name,
  2: shared.Color color = shared.Color.RED,
  3: set<string> tags,
  4: map<string, list<i32>> scores,
  5: optional binary blob,
  6: shared.Timestamp at,
  7: Path path,
  8: i8 b, 9: i16 s, 10: bool ok, 11: byte old, 12: uuid id,
  13: list<Item> children
}
service Inventory extends shared.Base {
  Item get(1: string name, 2: Names names) throws (1: NotFound nf),
  list<Item> all();
  oneway void touch(1: string name)
  map<i64, Value> values(1: set<shared.Color> colors = [])
}
service Other { void all() }
"#;

    fn load() -> Schema {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("shared.thrift"), SHARED).unwrap();
        std::fs::write(dir.path().join("main.thrift"), MAIN).unwrap();
        Schema::load(&dir.path().join("main.thrift")).unwrap()
    }

    fn named<'s>(schema: &'s Schema, name: &str) -> &'s StructDef {
        schema.structs.iter().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn includes_typedefs_enums_and_containers_resolve() {
        let schema = load();
        let item = named(&schema, "Item");
        let point = schema
            .structs
            .iter()
            .position(|s| s.name == "shared.Point")
            .unwrap();
        let color = schema
            .enums
            .iter()
            .position(|e| e.name == "shared.Color")
            .unwrap();
        assert_eq!(item.kind, StructKind::Struct);
        let types: Vec<(i16, &str, &Type, bool)> = item
            .fields
            .iter()
            .map(|f| (f.id, f.name.as_str(), &f.ty, f.required))
            .collect();
        let me = schema
            .structs
            .iter()
            .position(|s| s.name == "Item")
            .unwrap();
        assert_eq!(
            types,
            vec![
                (1, "name", &Type::String, true),
                (2, "color", &Type::Enum(color), false),
                (3, "tags", &Type::Set(Box::new(Type::String)), false),
                (
                    4,
                    "scores",
                    &Type::Map(
                        Box::new(Type::String),
                        Box::new(Type::List(Box::new(Type::I32)))
                    ),
                    false
                ),
                (5, "blob", &Type::Binary, false),
                (6, "at", &Type::I64, false),
                (7, "path", &Type::List(Box::new(Type::Struct(point))), false),
                (8, "b", &Type::Byte, false),
                (9, "s", &Type::I16, false),
                (10, "ok", &Type::Bool, false),
                (11, "old", &Type::Byte, false),
                (12, "id", &Type::Uuid, false),
                (
                    13,
                    "children",
                    &Type::List(Box::new(Type::Struct(me))),
                    false
                ),
            ]
        );
        assert_eq!(
            schema.enums[color].values,
            vec![
                ("RED".into(), 1),
                ("GREEN".into(), 2),
                ("BLUE".into(), 10),
                ("BLACK".into(), 11)
            ]
        );
        assert_eq!(named(&schema, "Value").kind, StructKind::Union);
        assert_eq!(named(&schema, "NotFound").kind, StructKind::Exception);
        assert!(named(&schema, "shared.Point").fields[0].required);
    }

    #[test]
    fn services_have_their_functions_and_those_they_extend() {
        let schema = load();
        let inv = &schema.services[0];
        assert_eq!(inv.name, "Inventory");
        let names: Vec<&str> = inv.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["get", "all", "touch", "values", "ping"]);
        let get = inv.function("get").unwrap();
        assert_eq!(
            get.args[1].ty,
            Type::Map(Box::new(Type::I32), Box::new(Type::String))
        );
        assert!(!get.args[0].required, "arguments may be left out");
        assert_eq!(get.throws[0].name, "nf");
        assert!(inv.function("touch").unwrap().oneway);
        assert_eq!(inv.function("ping").unwrap().result, None);
        // The routing name picks the service; otherwise the method does.
        assert_eq!(
            schema.pick_service("inventory", "get", None).unwrap().name,
            "Inventory"
        );
        assert_eq!(
            schema.pick_service("inv", "get", None).unwrap().name,
            "Inventory"
        );
        let err = schema
            .pick_service("inv", "all", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--idl-service"), "{err}");
        assert_eq!(
            schema
                .pick_service("inv", "all", Some("Other"))
                .unwrap()
                .name,
            "Other"
        );
        assert!(schema.pick_service("inv", "nothing", None).is_err());
    }

    #[test]
    fn mistakes_are_reported_with_where_they_are() {
        let err = Schema::parse("struct X {\n  1: string a\n  2 string b\n}\n").unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
        let err = Schema::parse("struct X { 1: Missing m }").unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown type Missing"),
            "{err:#}"
        );
        let err = Schema::parse("struct X { 1: other.T m }").unwrap_err();
        assert!(
            format!("{err:#}").contains("no include named other"),
            "{err:#}"
        );
        let err = Schema::parse("struct X { 1: i32 a, 1: i32 b }").unwrap_err();
        assert!(format!("{err:#}").contains("declared twice"), "{err:#}");
        let err = Schema::parse("typedef A B\ntypedef B A\nstruct X { 1: A a }").unwrap_err();
        assert!(format!("{err:#}").contains("too deep"), "{err:#}");
        let err = Schema::load(Path::new("no/such.thrift")).unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot read no/such.thrift"),
            "{err:#}"
        );
    }

    #[test]
    fn files_may_include_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.thrift");
        std::fs::write(&a, "include \"b.thrift\"\nstruct A { 1: b.B b }").unwrap();
        let b = "include \"a.thrift\"\nstruct B { 1: optional a.A a }";
        std::fs::write(dir.path().join("b.thrift"), b).unwrap();
        let schema = Schema::load(&a).unwrap();
        let names: Vec<&str> = schema.structs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["A", "b.B"]);
        assert_eq!(schema.structs[0].fields[0].ty, Type::Struct(1));
        assert_eq!(schema.structs[1].fields[0].ty, Type::Struct(0));
    }

    #[test]
    fn the_project_idls_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let echo = Schema::load(&root.join("examples/thrift/echo.thrift")).unwrap();
        let fail = echo.services[0].function("fail").unwrap();
        assert_eq!(fail.throws[0].ty, Type::Struct(0));
        assert!(echo.services[0].function("notify").unwrap().oneway);
        let bench = Schema::load(&root.join("bench/bench.thrift")).unwrap();
        let sleep = bench.services[0].function("sleep").unwrap();
        assert_eq!(sleep.result, Some(Type::Binary));
        assert_eq!(sleep.args[1].ty, Type::I32);
    }
}
