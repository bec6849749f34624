//! Feature flags: their definitions (with governance metadata) and the provider that
//! hands each stage's flag state to the system under test.
//!
//! [`FlagSet`] is the checked `flags:` section. [`provider`] hands each stage's state to
//! the system under test: over OFREP ([`ofrep`]), in a flagd file ([`flagd`]), in a
//! header, or in a started target's environment.

pub mod audit;
pub mod flagd;
pub mod ofrep;
pub mod provider;
pub mod telemetry;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The type of a flag's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagType {
    Boolean,
    String,
    Integer,
    Number,
    Object,
}

impl FlagType {
    /// Whether `value` is of this type.
    pub fn admits(self, value: &Value) -> bool {
        match self {
            FlagType::Boolean => value.is_boolean(),
            FlagType::String => value.is_string(),
            FlagType::Integer => value.is_i64(),
            FlagType::Number => value.is_number(),
            FlagType::Object => value.is_object(),
        }
    }
}

/// What a flag is for (docs/flags.md): `release` and `experiment` flags are temporary
/// (they should have an expiry, and go); `operational` and `permission` flags are
/// permanent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Release,
    Experiment,
    Operational,
    Permission,
}

impl Category {
    /// Every category, as scenario files and inventories name them.
    pub const NAMES: [&'static str; 4] = ["release", "experiment", "operational", "permission"];

    /// The category named `name` (`experimental` is read as `experiment`).
    pub fn parse(name: &str) -> Option<Category> {
        match name {
            "release" => Some(Category::Release),
            "experiment" | "experimental" => Some(Category::Experiment),
            "operational" => Some(Category::Operational),
            "permission" => Some(Category::Permission),
            _ => None,
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Whether flags of this category are meant to go away.
    pub fn temporary(self) -> bool {
        matches!(self, Category::Release | Category::Experiment)
    }
}

/// How flag states reach the system under test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    /// stagegate serves OFREP; the system under test evaluates flags over HTTP.
    #[default]
    Ofrep,
    /// stagegate writes a flagd flag file (at this path, if given) at each stage.
    FlagdFile(Option<String>),
    /// Each request carries the stage's flag states in this header.
    Header(String),
    /// The process target gets the flags as environment variables.
    Env,
}

impl Provider {
    /// The name used in scenario files.
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Ofrep => "ofrep",
            Provider::FlagdFile(_) => "flagd-file",
            Provider::Header(_) => "header",
            Provider::Env => "env",
        }
    }
}

/// A flag's state in one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlagState {
    /// Every record sees this value.
    Fixed(Value),
    /// Fractional exposure: each `(value, share)` goes to that share of records, split by
    /// record key; the remaining records see `rest`.
    Split { variants: Vec<(Value, f64)>, rest: Value },
}

/// The environment the `env` provider gives a started target for a stage's flags:
/// `FLAG_` and the flag's name in upper case with every other character than a letter or
/// digit made `_` (`new-enricher` is `FLAG_NEW_ENRICHER`); strings as they are, other
/// values as JSON (`true`, `3`, `{"a":1}`).
pub fn env_vars(states: &BTreeMap<String, FlagState>) -> Vec<(String, String)> {
    states
        .iter()
        .map(|(name, state)| {
            let var: String =
                name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
            let value = state.value_for(name, None);
            let text = value.as_str().map_or_else(|| value.to_string(), str::to_string);
            (format!("FLAG_{var}"), text)
        })
        .collect()
}

impl FlagState {
    /// The value a record with `key` sees: bucketed as flagd's `fractional` does with
    /// the weights stagegate's flagd files give ([`weights`](FlagState::weights)), so a
    /// key is in the same cohort whether the system under test asks stagegate (OFREP)
    /// or reads its flagd file, and in every run. Without a key, the rest's value.
    pub fn value_for(&self, flag: &str, key: Option<&str>) -> &Value {
        match self {
            FlagState::Fixed(v) => v,
            FlagState::Split { variants, rest } => {
                let Some(key) = key else { return rest };
                let (weights, total) = self.weights();
                let b = bucket(flag, key, total);
                let mut end = 0;
                for ((value, _), w) in variants.iter().zip(&weights) {
                    end += w;
                    if b < end {
                        return value;
                    }
                }
                rest
            }
        }
    }

    /// A split's integer weights (basis points, as flagd reads them) for each variant,
    /// the rest taking what is left of 10000; and 10000. A fixed state has none.
    pub fn weights(&self) -> (Vec<u64>, u64) {
        match self {
            FlagState::Fixed(_) => (Vec::new(), TOTAL_WEIGHT),
            FlagState::Split { variants, .. } => {
                (variants.iter().map(|(_, s)| (s * TOTAL_WEIGHT as f64).round() as u64).collect(), TOTAL_WEIGHT)
            }
        }
    }

    /// The share of records that see `value` (1 or 0 for a fixed state).
    pub fn share_of(&self, value: &Value) -> f64 {
        match self {
            FlagState::Fixed(v) => f64::from(u8::from(v == value)),
            FlagState::Split { variants, rest } => {
                let listed: f64 = variants.iter().filter(|(v, _)| v == value).map(|(_, s)| s).sum();
                let all: f64 = variants.iter().map(|(_, s)| s).sum();
                listed + if rest == value { (1.0 - all).max(0.0) } else { 0.0 }
            }
        }
    }

    /// Every value this state can take, for per-variant reporting.
    pub fn values(&self) -> Vec<&Value> {
        match self {
            FlagState::Fixed(v) => vec![v],
            FlagState::Split { variants, rest } => variants.iter().map(|(v, _)| v).chain([rest]).collect(),
        }
    }

    /// How a person reads it: `true`, or `true 10% / false`.
    pub fn describe(&self) -> String {
        match self {
            FlagState::Fixed(v) => v.to_string(),
            FlagState::Split { variants, rest } => {
                let parts: Vec<String> =
                    variants.iter().map(|(v, s)| format!("{v} {}", crate::scenario::units::format_share(*s))).collect();
                format!("{} / {rest} rest", parts.join(" / "))
            }
        }
    }
}

/// Whether a flag value holds text that would not print as itself (control or
/// direction characters, anywhere inside it): such a value is printed in reports and
/// sent in headers, where it breaks both.
pub fn unprintable(value: &Value) -> bool {
    match value {
        Value::String(s) => s.chars().any(crate::report::hidden),
        Value::Array(items) => items.iter().any(unprintable),
        Value::Object(map) => map.iter().any(|(k, v)| k.chars().any(crate::report::hidden) || unprintable(v)),
        _ => false,
    }
}

/// The sum of a split's weights: shares in basis points.
pub const TOTAL_WEIGHT: u64 = 10_000;

/// Whether `share` is a whole number of basis points, as splits are served.
pub fn whole_points(share: f64) -> bool {
    let points = share * TOTAL_WEIGHT as f64;
    (points - points.round()).abs() < 1e-6
}

/// The bucket of `key` for `flag`, in `0..total`, as flagd's `fractional` computes it
/// with no bucketing expression given (flagd-core 2.x, the `openfeature-provider-flagd`
/// in-process and file resolvers): MurmurHash3 (x86, 32-bit, seed 0) of the canonical
/// CBOR encoding of the array `[flag, key]`, scaled as `hash * total >> 32`. The same
/// key always falls in the same bucket, so exposure is sticky per record and a wider
/// step keeps every key of a narrower one.
pub fn bucket(flag: &str, key: &str, total: u64) -> u64 {
    let mut cbor = Vec::with_capacity(flag.len() + key.len() + 12);
    // Two text strings in an array: CBOR's definite, shortest form is its canonical one.
    if ciborium::into_writer(&(flag, key), &mut cbor).is_err() {
        return 0;
    }
    let hash = murmur3::murmur3_32(&mut std::io::Cursor::new(&cbor), 0).unwrap_or(0);
    (u64::from(hash) * total) >> 32
}

/// One flag definition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagDef {
    pub key: String,
    pub kind: FlagType,
    pub default: Value,
    pub category: Option<Category>,
    /// The category as the scenario wrote it (`experimental`, the former name, reads
    /// as `experiment`), for the audit.
    #[serde(skip)]
    pub category_as_written: Option<String>,
    pub owner: Option<String>,
    pub expires: Option<chrono::NaiveDate>,
}

/// The checked `flags:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct FlagSet {
    pub provider: Provider,
    pub definitions: Vec<FlagDef>,
}

impl FlagSet {
    /// The full state of every flag in a stage: the stage's states over the defaults.
    pub fn state(&self, overrides: &BTreeMap<String, FlagState>) -> BTreeMap<String, FlagState> {
        self.definitions
            .iter()
            .map(|d| {
                let state = overrides.get(&d.key).cloned().unwrap_or_else(|| FlagState::Fixed(d.default.clone()));
                (d.key.clone(), state)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_split_exposes_its_share_stickily() {
        let state = FlagState::Split { variants: vec![(json!(true), 0.1)], rest: json!(false) };
        let keys: Vec<String> = (0..20_000).map(|i| format!("order-{i}")).collect();
        let on = keys.iter().filter(|k| state.value_for("f", Some(k)) == &json!(true)).count();
        assert!((1800..2200).contains(&on), "{on} of 20000");
        assert_eq!(state.value_for("f", Some("order-7")), state.value_for("f", Some("order-7")));
        assert_eq!(state.value_for("f", None), &json!(false));
        // A wider exposure keeps every key of a narrower one.
        let wider = FlagState::Split { variants: vec![(json!(true), 0.5)], rest: json!(false) };
        assert!(keys.iter().all(|k| state.value_for("f", Some(k)) != &json!(true) || wider.value_for("f", Some(k)) == &json!(true)));
    }

    /// Vectors from flagd's own Python implementation (`openfeature-provider-flagd`
    /// 0.6.1: `mmh3.hash(cbor2.dumps([flag, key], canonical=True), signed=False)`, then
    /// `hash * 10000 >> 32`), covering one-byte, two-byte and multi-byte string lengths
    /// and non-ASCII keys.
    #[test]
    fn buckets_match_flagds_fractional() {
        let long_flag = "x".repeat(30);
        let long_key = "y".repeat(300);
        let vectors = [
            ("new-enricher", "order-1", 1955),
            ("new-enricher", "0c7f3a1e-0000-4000-8000-000000000001", 6879),
            ("f", "a", 8215),
            ("tier", "ü-ключ", 7131),
            (long_flag.as_str(), long_key.as_str(), 7500),
        ];
        for (flag, key, expected) in vectors {
            assert_eq!(bucket(flag, key, 10_000), expected, "{flag} {key}");
        }
    }
}
