//! The record schema: raw YAML form (`SchemaSpec`) and its checked form ([`Schema`]).
//!
//! A schema names the key field and, per field, one generator: a `type` (uuid, int,
//! decimal, timestamp, ...), a `fake` generator by name, or `one_of` a list of values
//! with optional weights. Every mistake is reported with file, line and key path.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::scenario::Ctx;
use crate::scenario::diag::{Diagnostic, Diagnostics, nearest};
use crate::scenario::units::parse_duration;
use crate::scenario::yaml::{self, join_key};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaSpec {
    name: String,
    key: String,
    fields: indexmap_like::OrderedFields,
}

/// Field order matters (records print in a stable order), and YAML maps keep it.
mod indexmap_like {
    use serde::de::{Deserializer, MapAccess, Visitor};

    use super::FieldSpec;

    #[derive(Debug)]
    pub struct OrderedFields(pub Vec<(String, FieldSpec)>);

    impl<'de> serde::Deserialize<'de> for OrderedFields {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = OrderedFields;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a map of field name to field generator")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut out = Vec::new();
                    while let Some((k, v)) = map.next_entry::<String, FieldSpec>()? {
                        out.push((k, v));
                    }
                    Ok(OrderedFields(out))
                }
            }
            d.deserialize_map(V)
        }
    }
}

/// One field as written in the schema file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FieldSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    fake: Option<String>,
    one_of: Option<Vec<Value>>,
    weights: Option<Vec<f64>>,
    min: Option<f64>,
    max: Option<f64>,
    distribution: Option<String>,
    exponent: Option<f64>,
    scale: Option<u32>,
    start: Option<String>,
    step: Option<String>,
    #[serde(default)]
    pii: bool,
}

/// A checked schema.
#[derive(Debug, Clone)]
pub struct Schema {
    pub name: String,
    /// The field whose value identifies a record (unique per record).
    pub key: String,
    pub fields: Vec<Field>,
    /// The text it was read from (load workers are sent it).
    pub source: String,
}

/// One field of a record.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub kind: FieldKind,
    /// Personal data: must never appear unmasked in the output when checked.
    pub pii: bool,
}

/// How a field's value is made.
#[derive(Debug, Clone)]
pub enum FieldKind {
    Uuid,
    /// Uniform integers in `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    /// Zipf-distributed integers in `min..=max` (rank 1 is `min`, the most frequent).
    Zipf {
        min: i64,
        max: i64,
        exponent: f64,
    },
    /// Decimal numbers with `scale` digits after the point, uniform in `min..=max`.
    Decimal {
        min: f64,
        max: f64,
        scale: u32,
    },
    /// Event time: `start` plus `step` per record, with jitter inside the step.
    Timestamp {
        start: DateTime<Utc>,
        step_micros: u64,
    },
    /// One of the listed values, by weight.
    OneOf {
        values: Vec<Value>,
        cumulative: Vec<f64>,
    },
    /// A generator of the `fake` crate.
    Fake(FakeKind),
    Bool,
    /// Consecutive integers from `start`: unique, like a database id.
    Sequence {
        start: i64,
    },
}

/// The `fake:` generators a schema can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeKind {
    Name,
    FirstName,
    LastName,
    SafeEmail,
    FreeEmail,
    Username,
    City,
    Country,
    StreetName,
    ZipCode,
    PhoneNumber,
    CompanyName,
    Word,
    Sentence,
    Ipv4,
    UserAgent,
    CurrencyCode,
}

const FAKES: [(&str, FakeKind); 17] = [
    ("name", FakeKind::Name),
    ("first_name", FakeKind::FirstName),
    ("last_name", FakeKind::LastName),
    ("safe_email", FakeKind::SafeEmail),
    ("free_email", FakeKind::FreeEmail),
    ("username", FakeKind::Username),
    ("city", FakeKind::City),
    ("country", FakeKind::Country),
    ("street_name", FakeKind::StreetName),
    ("zip_code", FakeKind::ZipCode),
    ("phone_number", FakeKind::PhoneNumber),
    ("company_name", FakeKind::CompanyName),
    ("word", FakeKind::Word),
    ("sentence", FakeKind::Sentence),
    ("ipv4", FakeKind::Ipv4),
    ("user_agent", FakeKind::UserAgent),
    ("currency_code", FakeKind::CurrencyCode),
];

const TYPES: [&str; 7] = ["uuid", "sequence", "int", "decimal", "timestamp", "bool", "string"];

/// The default first event time: a fixed instant, so records do not depend on the clock.
const DEFAULT_START: &str = "2026-01-01T00:00:00Z";

impl Schema {
    /// Reads and checks the schema file at `path`.
    pub fn load(path: &Path) -> Result<Schema, Diagnostics> {
        let text = crate::limits::read_bounded(path, crate::limits::SCHEMA_BYTES).map_err(|e| {
            Diagnostics(vec![Diagnostic {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                path: String::new(),
                message: format!("cannot read the data schema: {e}"),
                hint: None,
            }])
        })?;
        Schema::parse(path, &text)
    }

    /// Checks a schema given as text; `path` is used in messages only.
    pub fn parse(path: &Path, text: &str) -> Result<Schema, Diagnostics> {
        let (spec, loc) = yaml::parse::<SchemaSpec>(path, text)?;
        let mut ctx = Ctx {
            file: path,
            loc: &loc,
            errors: Vec::new(),
            warnings: Vec::new(),
            overrides: &[],
            broken_stages: Vec::new(),
        };
        let mut fields = Vec::new();
        let mut names = BTreeMap::new();
        let declared: Vec<String> = spec.fields.0.iter().map(|(n, _)| n.clone()).collect();
        for (name, f) in spec.fields.0 {
            let at = join_key("fields", &name);
            if names.insert(name.clone(), ()).is_some() {
                ctx.error(&at, format!("field `{name}` is defined twice"));
            }
            if let Some(kind) = compile_field(&mut ctx, &at, &f) {
                fields.push(Field { name, kind, pii: f.pii });
            }
        }
        if !declared.contains(&spec.key) {
            let hint = nearest(&spec.key, declared.iter().map(String::as_str))
                .map(|b| format!(" (did you mean `{b}`?)"))
                .unwrap_or_default();
            ctx.error("key", format!("the key field `{}` is not one of the fields{hint}", spec.key));
        }
        if let Some(key) = fields.iter().find(|f| f.name == spec.key)
            && !matches!(key.kind, FieldKind::Uuid | FieldKind::Sequence { .. })
        {
            ctx.error(
                &join_key("fields", &spec.key),
                format!("the key field `{}` must be unique per record; use `type: uuid` or `type: sequence`", spec.key),
            );
        }
        if declared.is_empty() {
            ctx.error("fields", "a schema needs at least one field");
        }
        if ctx.errors.is_empty() {
            Ok(Schema { name: spec.name, key: spec.key, fields, source: text.to_string() })
        } else {
            Err(Diagnostics(ctx.errors).sorted())
        }
    }
}

fn compile_field(ctx: &mut Ctx, at: &str, f: &FieldSpec) -> Option<FieldKind> {
    let chosen = [f.kind.is_some(), f.fake.is_some(), f.one_of.is_some()].iter().filter(|x| **x).count();
    if chosen != 1 {
        ctx.error(at, "a field needs exactly one of `type`, `fake` or `one_of`");
        return None;
    }
    if let Some(name) = &f.fake {
        return match FAKES.iter().find(|(n, _)| n == name) {
            Some((_, k)) => Some(FieldKind::Fake(*k)),
            None => {
                let names: Vec<&str> = FAKES.iter().map(|(n, _)| *n).collect();
                let hint = nearest(name, names.iter().copied())
                    .map_or(format!("known generators: {}", names.join(", ")), |b| format!("did you mean `{b}`?"));
                ctx.error(&join_key(at, "fake"), format!("unknown fake generator `{name}`; {hint}"));
                None
            }
        };
    }
    if let Some(values) = &f.one_of {
        if values.is_empty() {
            ctx.error(&join_key(at, "one_of"), "`one_of` needs at least one value");
            return None;
        }
        let weights = f.weights.clone().unwrap_or_else(|| vec![1.0; values.len()]);
        if weights.len() != values.len() {
            ctx.error(
                &join_key(at, "weights"),
                format!("{} weights for {} values; give one weight per value", weights.len(), values.len()),
            );
            return None;
        }
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) || weights.iter().sum::<f64>() <= 0.0 {
            ctx.error(&join_key(at, "weights"), "weights must be non-negative and not all zero");
            return None;
        }
        // Scaled by the largest first, so weights near f64's limit do not sum to infinity.
        let top = weights.iter().copied().fold(0.0, f64::max);
        let weights: Vec<f64> = weights.iter().map(|w| w / top).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cumulative = weights.iter().map(|w| {
            acc += w / total;
            acc
        });
        return Some(FieldKind::OneOf { values: values.clone(), cumulative: cumulative.collect() });
    }
    let kind = f.kind.as_deref().unwrap_or_default();
    let range = |ctx: &mut Ctx, default: (f64, f64)| -> Option<(f64, f64)> {
        let (min, max) = (f.min.unwrap_or(default.0), f.max.unwrap_or(default.1));
        // Integers, and decimals counted in units of their last digit, are drawn exactly
        // only within f64's whole numbers.
        let exact = 2f64.powi(53);
        for (key, v) in [("min", min), ("max", max)] {
            if !v.is_finite() || v.abs() > exact {
                ctx.error(&join_key(at, key), format!("`{key}` must lie within ±2^53 (9007199254740992), got {v}"));
                return None;
            }
        }
        if min > max {
            ctx.error(&join_key(at, "min"), format!("`min` ({min}) is above `max` ({max})"));
            return None;
        }
        Some((min, max))
    };
    match kind {
        "uuid" => Some(FieldKind::Uuid),
        "sequence" => match f.start.as_deref().map(str::parse::<i64>) {
            None => Some(FieldKind::Sequence { start: 1 }),
            // Room for the most records a run could send, so the keys never wrap around.
            Some(Ok(start)) if (-(1i64 << 62)..(1i64 << 62)).contains(&start) => Some(FieldKind::Sequence { start }),
            Some(Ok(_)) => {
                ctx.error(&join_key(at, "start"), "a sequence must start within ±2^62, so its keys never wrap around");
                None
            }
            Some(Err(_)) => {
                ctx.error(&join_key(at, "start"), "a sequence starts at a whole number, e.g. `start: 1000`");
                None
            }
        },
        "bool" => Some(FieldKind::Bool),
        "string" => Some(FieldKind::Fake(FakeKind::Word)),
        "int" => {
            let (min, max) = range(ctx, (0.0, 1_000_000.0))?;
            let (min, max) = (min as i64, max as i64);
            match f.distribution.as_deref() {
                None | Some("uniform") => Some(FieldKind::Int { min, max }),
                Some("zipf") => {
                    let exponent = f.exponent.unwrap_or(1.0);
                    if !(exponent > 0.0 && exponent.is_finite()) {
                        ctx.error(&join_key(at, "exponent"), "a zipf exponent must be above 0");
                        return None;
                    }
                    Some(FieldKind::Zipf { min, max, exponent })
                }
                Some(other) => {
                    ctx.error(
                        &join_key(at, "distribution"),
                        format!("unknown distribution `{other}`; expected `uniform` or `zipf`"),
                    );
                    None
                }
            }
        }
        "decimal" => {
            let (min, max) = range(ctx, (0.0, 1000.0))?;
            let scale = f.scale.unwrap_or(2);
            if scale > 9 {
                ctx.error(&join_key(at, "scale"), "a decimal scale above 9 digits is not supported");
                return None;
            }
            let factor = 10f64.powi(scale as i32);
            if min.abs().max(max.abs()) * factor > 2f64.powi(53) {
                ctx.error(
                    &join_key(at, "max"),
                    format!(
                        "with `scale: {scale}`, `min` and `max` must lie within ±{:.0}, so every value is exact",
                        2f64.powi(53) / factor
                    ),
                );
                return None;
            }
            if (min * factor).ceil() > (max * factor).floor() {
                ctx.error(
                    &join_key(at, "min"),
                    format!("no number with {scale} decimal digits lies between `min` ({min}) and `max` ({max})"),
                );
                return None;
            }
            Some(FieldKind::Decimal { min, max, scale })
        }
        "timestamp" => {
            let start_text = f.start.as_deref().unwrap_or(DEFAULT_START);
            let start = match DateTime::parse_from_rfc3339(start_text) {
                Ok(t) => t.with_timezone(&Utc),
                Err(_) => {
                    ctx.error(
                        &join_key(at, "start"),
                        format!("expected an RFC 3339 time like `{DEFAULT_START}`, got `{start_text}`"),
                    );
                    return None;
                }
            };
            let step = match parse_duration(f.step.as_deref().unwrap_or("100ms")) {
                Ok(d) => d,
                Err(hint) => {
                    ctx.error(&join_key(at, "step"), hint);
                    return None;
                }
            };
            Some(FieldKind::Timestamp { start, step_micros: step.as_micros() as u64 })
        }
        other => {
            let hint = nearest(other, TYPES)
                .map_or(format!("types are {}", TYPES.join(", ")), |b| format!("did you mean `{b}`?"));
            ctx.error(&join_key(at, "type"), format!("unknown type `{other}`; {hint}"));
            None
        }
    }
}

impl Schema {
    /// The timestamp fields whose values would pass the year 9999 (beyond what RFC 3339
    /// writes) within `records` records: a record's time is at most (index + 1) steps
    /// past the start.
    pub fn timestamps_past_9999(&self, records: f64) -> Vec<&Field> {
        use chrono::Datelike;
        self.fields
            .iter()
            .filter(|f| {
                let FieldKind::Timestamp { start, step_micros } = &f.kind else { return false };
                let reach = (records + 1.0) * *step_micros as f64;
                start
                    .checked_add_signed(chrono::TimeDelta::microseconds(reach.min(i64::MAX as f64) as i64))
                    .is_none_or(|t| t.year() > 9999)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_bad_field_with_its_line() {
        let text = "name: t\nkey: id\nfields:\n  id: { type: uuidd }\n  n: { fake: nmae }\n  c: { one_of: [a, b], weights: [1] }\n";
        let err = Schema::parse(Path::new("t.yaml"), text).unwrap_err();
        let lines: Vec<_> = err.0.iter().map(|d| (d.line, d.path.as_str())).collect();
        assert_eq!(lines, vec![(4, "fields.id.type"), (5, "fields.n.fake"), (6, "fields.c.weights")]);
        assert!(err.0[0].message.contains("did you mean `uuid`?"));
        assert!(err.0[1].message.contains("did you mean `name`?"));
    }

    #[test]
    fn the_key_must_be_unique_per_record() {
        let text = "name: t\nkey: n\nfields:\n  n: { type: int, min: 1, max: 10 }\n";
        let err = Schema::parse(Path::new("t.yaml"), text).unwrap_err();
        assert!(err.0[0].message.contains("`type: uuid` or `type: sequence`"), "{}", err.0[0].message);
        let ok = "name: t\nkey: n\nfields:\n  n: { type: sequence, start: 1000 }\n";
        assert!(Schema::parse(Path::new("t.yaml"), ok).is_ok());
    }

    #[test]
    fn the_key_must_be_a_field() {
        let text = "name: t\nkey: order_id\nfields:\n  orderid: { type: uuid }\n";
        let err = Schema::parse(Path::new("t.yaml"), text).unwrap_err();
        assert_eq!(err.0[0].path, "key");
        assert!(err.0[0].message.contains("did you mean `orderid`?"));
    }

    #[test]
    fn numbers_that_cannot_be_drawn_exactly_in_range_are_refused_where_written() {
        let text = "name: t\nkey: id\nfields:\n  id: { type: uuid }\n  a: { type: decimal, min: 0, max: 1e300 }\n  b: { type: decimal, min: 0.001, max: 0.002, scale: 2 }\n  d: { type: decimal, min: 0, max: 1e12, scale: 6 }\n";
        let err = Schema::parse(Path::new("t.yaml"), text).unwrap_err();
        let lines: Vec<_> = err.0.iter().map(|d| (d.line, d.path.as_str())).collect();
        assert_eq!(lines, vec![(5, "fields.a.max"), (6, "fields.b.min"), (7, "fields.d.max")]);
        assert!(err.0[1].message.contains("no number with 2 decimal digits"), "{}", err.0[1].message);
        assert!(err.0[2].message.contains("with `scale: 6`"), "{}", err.0[2].message);
        let infinite = "name: t\nkey: id\nfields:\n  id: { type: uuid }\n  c: { type: int, max: .inf }\n";
        let err = Schema::parse(Path::new("t.yaml"), infinite).unwrap_err();
        assert_eq!((err.0[0].line, err.0[0].path.as_str()), (5, "fields.c.max"), "{:?}", err.0);
    }

    #[test]
    fn weights_near_the_largest_float_still_split_evenly() {
        let text =
            "name: t\nkey: id\nfields:\n  id: { type: uuid }\n  c: { one_of: [a, b], weights: [1e308, 1e308] }\n";
        let schema = Schema::parse(Path::new("t.yaml"), text).unwrap();
        let FieldKind::OneOf { cumulative, .. } = &schema.fields[1].kind else { panic!("not one_of") };
        assert_eq!(cumulative, &vec![0.5, 1.0]);
    }
}
