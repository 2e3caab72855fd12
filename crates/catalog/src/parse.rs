//! Reading one catalog file: TOML text to a validated [`GpuModel`], with positions kept.
//!
//! The file is first read into generic tables whose keys and values keep their byte spans
//! (`toml::Spanned`), then every field is checked by hand. That way each complaint — a wrong
//! type, a value out of range, an unknown or missing key — points at the exact line and column and
//! names the field (`type[1].share`), which serde's derive alone cannot do. This module does no
//! I/O: [`parse_file`] takes the text and the path it came from.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The longest type or model name accepted: names are shown in tables, logs and libvirt
/// metadata, and a 10,000-character one would be accepted and used.
pub const MAX_NAME: usize = 64;
/// The longest binding accepted: a sysfs name (`NAME_MAX`).
pub const MAX_BINDING: usize = 255;

/// The first characters of an over-long value, for its error message.
fn shown(value: &str) -> String {
    value.chars().take(24).collect()
}

use toml::{Spanned, Value};

use crate::bytesize::ByteSize;
use crate::error::{excerpt, Error, Result};
use crate::model::{Binding, GpuModel, VgpuType};

/// Highest GVM `compute.priority`.
pub const MAX_PRIORITY: u8 = 16;

/// Slack allowed when summing fixed shares.
const SHARE_EPSILON: f64 = 1e-9;

type Table = BTreeMap<Spanned<String>, Spanned<Value>>;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    gpu: Option<Spanned<Table>>,
    #[serde(rename = "type", default)]
    types: Vec<Spanned<Table>>,
}

/// A 1-based line and column in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

/// Where a type's name and binding were written, for checks across files.
#[derive(Debug, Clone)]
pub(crate) struct TypePos {
    pub name: Pos,
    pub binding: Pos,
}

/// A parsed file with the positions later catalog-wide checks need.
#[derive(Debug, Clone)]
pub(crate) struct ParsedFile {
    pub model: GpuModel,
    pub model_pos: Pos,
    pub type_pos: Vec<TypePos>,
}

/// Turn a byte offset into a 1-based line and a 1-based column counted in characters.
pub(crate) fn pos_at(text: &str, offset: usize) -> Pos {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Pos {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

/// Builds positioned errors for one file.
struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err_at(&self, offset: usize, field: impl Into<String>, message: impl Into<String>) -> Error {
        self.err_pos(pos_at(self.text, offset), field, message)
    }

    fn err_pos(&self, pos: Pos, field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::invalid(
            self.file,
            pos.line,
            pos.column,
            &field.into(),
            &message.into(),
        )
    }

    fn err(&self, span: &Range<usize>, field: &str, message: impl Into<String>) -> Error {
        self.err_at(span.start, field, message)
    }

    /// Fails on any key of `table` not in `known`.
    fn deny_unknown(&self, table: &Table, prefix: &str, known: &[&str]) -> Result<()> {
        for key in table.keys() {
            if !known.contains(&key.get_ref().as_str()) {
                let list = known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(self.err(
                    &key.span(),
                    &format!("{prefix}.{}", key.get_ref()),
                    format!("unknown field; expected one of {list}"),
                ));
            }
        }
        Ok(())
    }
}

/// Looks up `key` in a table.
fn get<'t>(table: &'t Table, key: &str) -> Option<&'t Spanned<Value>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v)
}

/// One field of one table, with everything needed to complain about it.
struct Field<'c, 't> {
    ctx: &'c Ctx<'c>,
    table_span: Range<usize>,
    path: String,
    value: Option<&'t Spanned<Value>>,
}

impl<'c, 't> Field<'c, 't> {
    fn new(ctx: &'c Ctx<'c>, table: &'t Spanned<Table>, prefix: &str, key: &str) -> Self {
        Field {
            ctx,
            table_span: table.span(),
            path: format!("{prefix}.{key}"),
            value: get(table.get_ref(), key),
        }
    }

    fn span(&self) -> Range<usize> {
        self.value
            .map_or_else(|| self.table_span.clone(), Spanned::span)
    }

    fn fail(&self, message: impl Into<String>) -> Error {
        self.ctx.err(&self.span(), &self.path, message)
    }

    fn wrong_type(&self, expected: &str, v: &Value) -> Error {
        self.fail(format!(
            "expected {expected}, found {} {}",
            v.type_str(),
            excerpt(&v.to_string(), 40)
        ))
    }

    fn missing(&self, expected: &str) -> Error {
        self.fail(format!(
            "missing field; add `{} = <{expected}>`",
            self.key()
        ))
    }

    fn key(&self) -> &str {
        self.path.rsplit('.').next().unwrap_or(&self.path)
    }

    fn opt_string(&self) -> Result<Option<String>> {
        match self.value.map(Spanned::get_ref) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong_type("a string", v)),
        }
    }

    fn string(&self) -> Result<String> {
        self.opt_string()?.ok_or_else(|| self.missing("string"))
    }

    fn opt_bool(&self) -> Result<Option<bool>> {
        match self.value.map(Spanned::get_ref) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type("true or false", v)),
        }
    }

    fn integer(&self, min: i64, max: i64) -> Result<i64> {
        match self.value.map(Spanned::get_ref) {
            None => Err(self.missing("integer")),
            Some(Value::Integer(n)) if (min..=max).contains(n) => Ok(*n),
            Some(Value::Integer(n)) => {
                Err(self.fail(format!("{n} is out of range; use {min}..={max}")))
            }
            Some(v) => Err(self.wrong_type(&format!("an integer {min}..={max}"), v)),
        }
    }

    fn opt_number(&self) -> Result<Option<f64>> {
        match self.value.map(Spanned::get_ref) {
            None => Ok(None),
            Some(Value::Float(f)) => Ok(Some(*f)),
            // Precision loss is irrelevant: only 0 and 1 are meaningful integers here.
            #[allow(clippy::cast_precision_loss)]
            Some(Value::Integer(n)) => Ok(Some(*n as f64)),
            Some(v) => Err(self.wrong_type("a number", v)),
        }
    }

    fn opt_size(&self) -> Result<Option<ByteSize>> {
        match self.value.map(Spanned::get_ref) {
            None => Ok(None),
            Some(Value::String(s)) => s
                .parse::<ByteSize>()
                .map(Some)
                .map_err(|e| self.fail(e.to_string())),
            Some(Value::Integer(n)) => u64::try_from(*n)
                .map(|n| Some(ByteSize(n)))
                .map_err(|_| self.fail(format!("a size cannot be negative ({n})"))),
            Some(v) => Err(self.wrong_type("a size such as \"20GiB\"", v)),
        }
    }
}

const GPU_KEYS: &[&str] = &["model", "description", "framebuffer", "example"];
const TYPE_KEYS: &[&str] = &[
    "name",
    "mdev_type",
    "mdev_name",
    "memory_limit",
    "priority",
    "share",
    "max_instances",
    "host_swap",
    "description",
];

/// Parse and validate one catalog file's text. `file` is used for messages and [`GpuModel::source`].
pub(crate) fn parse_file(file: &Path, text: &str) -> Result<ParsedFile> {
    let ctx = Ctx { file, text };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let mut message = e.message().trim().replace('\n', "; ");
        if message.is_empty() {
            // The toml crate says nothing about a lone carriage return at the start.
            message = match text.get(offset..).and_then(|t| t.chars().next()) {
                Some('\r') => "a carriage return without a newline after it; \
                     end lines with \\n (or \\r\\n)"
                    .to_string(),
                _ => "invalid TOML here".to_string(),
            };
        }
        ctx.err_at(offset, field_at(text, offset, e.message()), message)
    })?;
    let gpu = raw.gpu.as_ref().ok_or_else(|| {
        ctx.err_at(
            0,
            "gpu",
            "missing [gpu] table; start the file with `[gpu]` and `model = \"...\"`",
        )
    })?;
    ctx.deny_unknown(gpu.get_ref(), "gpu", GPU_KEYS)?;

    let model_field = Field::new(&ctx, gpu, "gpu", "model");
    let model = model_field.string()?;
    if model.trim().is_empty() {
        return Err(
            model_field.fail("the model name is empty; name the GPU model, e.g. \"H100-80GB\"")
        );
    }
    if model.len() > MAX_NAME {
        return Err(model_field.fail(format!(
            "the model name '{}…' is {} bytes long; use at most {MAX_NAME}",
            shown(&model),
            model.len()
        )));
    }
    let model_pos = pos_at(text, model_field.span().start);
    let framebuffer_field = Field::new(&ctx, gpu, "gpu", "framebuffer");
    let framebuffer = framebuffer_field.opt_size()?;
    if framebuffer == Some(ByteSize(0)) {
        return Err(framebuffer_field
            .fail("the framebuffer cannot be 0; give the card's memory or leave it out"));
    }

    let mut types: Vec<VgpuType> = Vec::with_capacity(raw.types.len());
    let mut type_pos: Vec<TypePos> = Vec::with_capacity(raw.types.len());
    for (i, table) in raw.types.iter().enumerate() {
        let prefix = format!("type[{i}]");
        let (ty, pos) = parse_type(&ctx, table, &prefix, &model, framebuffer)?;
        for (j, other) in types.iter().enumerate() {
            if other.name == ty.name {
                return Err(ctx.err_pos(
                    pos.name,
                    format!("{prefix}.name"),
                    format!(
                        "type name '{}' is already used by type[{j}] at line {}; type names must be unique",
                        ty.name, type_pos[j].name.line
                    ),
                ));
            }
            if other.binding == ty.binding {
                return Err(ctx.err_pos(
                    pos.binding,
                    binding_field(&prefix, &ty.binding),
                    format!(
                        "{} is already bound by type '{}' at line {}; each kernel type may be bound once",
                        ty.binding, other.name, type_pos[j].binding.line
                    ),
                ));
            }
        }
        types.push(ty);
        type_pos.push(pos);
    }

    Ok(ParsedFile {
        model: GpuModel {
            model,
            description: Field::new(&ctx, gpu, "gpu", "description").opt_string()?,
            framebuffer,
            example: Field::new(&ctx, gpu, "gpu", "example")
                .opt_bool()?
                .unwrap_or(false),
            source: PathBuf::from(file),
            types,
        },
        model_pos,
        type_pos,
    })
}

/// The field path of a binding (`type[0].mdev_type` or `type[0].mdev_name`).
pub(crate) fn binding_field(prefix: &str, binding: &Binding) -> String {
    match binding {
        Binding::TypeId(_) => format!("{prefix}.mdev_type"),
        Binding::TypeName(_) => format!("{prefix}.mdev_name"),
    }
}

fn parse_type(
    ctx: &Ctx<'_>,
    table: &Spanned<Table>,
    prefix: &str,
    model: &str,
    framebuffer: Option<ByteSize>,
) -> Result<(VgpuType, TypePos)> {
    ctx.deny_unknown(table.get_ref(), prefix, TYPE_KEYS)?;
    let f = |key: &str| Field::new(ctx, table, prefix, key);

    let name_field = f("name");
    let name = name_field.string()?;
    if name.len() > MAX_NAME {
        return Err(name_field.fail(format!(
            "type name '{}…' is {} bytes long; use at most {MAX_NAME}",
            shown(&name),
            name.len()
        )));
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(name_field.fail(format!(
            "type name '{name}' must be non-empty and use only letters, digits, '-', '_' and '.'"
        )));
    }

    let (id_field, name_attr_field) = (f("mdev_type"), f("mdev_name"));
    let binding_field = match (id_field.value, name_attr_field.value) {
        (Some(_), Some(_)) => {
            return Err(name_attr_field.fail(
                "both mdev_type and mdev_name are set; bind by exactly one (type id or name attribute)",
            ))
        }
        (None, None) => {
            return Err(f("mdev_type").fail(
                "no binding; add `mdev_type = \"<type id>\"` or `mdev_name = \"<kernel name attribute>\"`",
            ))
        }
        (Some(_), None) => &id_field,
        (None, Some(_)) => &name_attr_field,
    };
    let target = binding_field.string()?;
    if target.trim().is_empty() {
        return Err(binding_field.fail("the binding is empty; name the kernel mdev type"));
    }
    if target.len() > MAX_BINDING {
        return Err(binding_field.fail(format!(
            "the binding '{}…' is {} bytes long; a kernel type id or name attribute is at most {MAX_BINDING}",
            shown(&target),
            target.len()
        )));
    }
    let binding = if id_field.value.is_some() {
        if target.contains('/') {
            return Err(binding_field.fail(format!("type id '{target}' cannot contain '/'")));
        }
        Binding::TypeId(target)
    } else {
        Binding::TypeName(target)
    };

    let mem_field = f("memory_limit");
    let memory_limit = mem_field
        .opt_size()?
        .ok_or_else(|| mem_field.missing("size such as \"20GiB\""))?;
    if memory_limit.0 == 0 {
        return Err(mem_field.fail("the memory limit must be more than 0"));
    }
    if let Some(fb) = framebuffer {
        if memory_limit > fb {
            return Err(mem_field.fail(format!(
                "{memory_limit} exceeds the model's framebuffer of {fb}; lower it or fix gpu.framebuffer"
            )));
        }
    }

    let priority =
        u8::try_from(f("priority").integer(0, i64::from(MAX_PRIORITY))?).unwrap_or(MAX_PRIORITY);
    let max_instances =
        u32::try_from(f("max_instances").integer(1, i64::from(u32::MAX))?).unwrap_or(u32::MAX);

    let share_field = f("share");
    let share = share_field.opt_number()?;
    if let Some(s) = share {
        if !(s > 0.0 && s <= 1.0) {
            return Err(share_field.fail(format!(
                "share {s} is out of range; use a fraction in (0, 1]"
            )));
        }
        if s * f64::from(max_instances) > 1.0 + SHARE_EPSILON {
            return Err(share_field.fail(format!(
                "share {s} times max_instances {max_instances} is more than the whole GPU; \
                 use at most {:.6} or lower max_instances",
                1.0 / f64::from(max_instances)
            )));
        }
    }

    let swap_field = f("host_swap");
    let host_swap = swap_field
        .opt_bool()?
        .ok_or_else(|| swap_field.missing("true or false"))?;

    let pos = TypePos {
        name: pos_at(ctx.text, name_field.span().start),
        binding: pos_at(ctx.text, binding_field.span().start),
    };
    let ty = VgpuType {
        name,
        model: model.to_string(),
        binding,
        memory_limit,
        priority,
        share,
        max_instances,
        host_swap,
        description: f("description").opt_string()?,
    };
    Ok((ty, pos))
}

/// Best guess of the field a TOML syntax or shape error is about: the key named in the message,
/// else the key on the error's line, prefixed by the table the line is in.
fn field_at(text: &str, offset: usize, message: &str) -> String {
    let head = text.get(..offset.min(text.len())).unwrap_or(text);
    let mut table = String::new();
    let mut type_count = 0usize;
    for line in head.lines() {
        let l = line.trim();
        if l.starts_with("[[") {
            let name = l
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
            if name == "type" {
                table = format!("type[{type_count}]");
                type_count += 1;
            } else {
                table = name.to_string();
            }
        } else if l.starts_with('[') {
            table = l
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
        }
    }
    let named = message
        .split('`')
        .nth(1)
        .filter(|_| message.starts_with("unknown field") || message.starts_with("missing field"));
    let line_start = head.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = named.map(str::to_string).or_else(|| {
        line.split_once('=')
            .map(|(k, _)| k.trim().to_string())
            .filter(|k| !k.is_empty() && !k.starts_with('['))
    });
    match (table.is_empty(), key) {
        (_, Some(k)) if line.trim_start().starts_with('[') => k,
        (true, Some(k)) => k,
        (false, Some(k)) => format!("{table}.{k}"),
        (_, None) => table,
    }
}
