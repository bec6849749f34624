//! The raw scenario file: types that mirror the YAML, key for key.
//!
//! Nothing here is checked beyond its shape: durations, rates and checks are kept as the
//! text the user wrote, so that `compile` can report each mistake with its own hint.
//! Every struct refuses unknown keys. The doc comments are the format's reference.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// A number or a string, kept as text (`30s`, `200/s`, `1%`, `42`).
#[derive(Debug, Clone, PartialEq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Text(s)),
            Value::Number(n) => Ok(Text(n.to_string())),
            Value::Bool(b) => Ok(Text(b.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "expected a single value like `30s`, `200/s` or `1%`, got {other}"
            ))),
        }
    }
}

/// The whole scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    /// Format version; must be `1`.
    pub version: u32,
    /// Scenario name, used in report file names.
    pub name: String,
    /// One line on what the rehearsal decides.
    #[serde(default)]
    pub description: Option<String>,
    /// Seed of every random choice (data, fault decisions). Default: random, printed.
    #[serde(default)]
    pub seed: Option<u64>,
    /// The system under test.
    pub target: TargetSpec,
    /// What the system under test talks to, by name; each gets a fault proxy.
    #[serde(default)]
    pub dependencies: BTreeMap<String, DependencySpec>,
    /// Feature flags and how they reach the system under test.
    #[serde(default)]
    pub flags: Option<FlagsSpec>,
    /// The synthetic load.
    pub workload: WorkloadSpec,
    /// The stages, run in order, each with a flag state and a fault plan.
    pub stages: Vec<StageSpec>,
    /// Checks over each stage's metrics; strings or maps.
    #[serde(default)]
    pub criteria: Vec<Value>,
}

/// `target:`: exactly one of the forms.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// A target shipped inside stagegate: `orders-pipeline`.
    pub builtin: Option<String>,
}

/// One entry of `dependencies:`: exactly one of the forms.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependencySpec {
    /// A dependency shipped inside stagegate: `kv-store`.
    pub builtin: Option<String>,
}

/// `flags:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagsSpec {
    /// How flag states reach the system under test: `ofrep` (default).
    #[serde(default)]
    pub provider: Option<String>,
    /// The flags, by key.
    #[serde(default)]
    pub definitions: BTreeMap<String, FlagDefSpec>,
}

/// One flag definition.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagDefSpec {
    /// `boolean`, `string`, `integer`, `number` or `object`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value when a stage does not set it.
    pub default: Value,
    /// `operational`, `experimental`, `release` or `permission`.
    #[serde(default)]
    pub category: Option<String>,
    /// Who answers for the flag.
    #[serde(default)]
    pub owner: Option<String>,
    /// Date after which the flag should be gone (`2027-03-01`); a warning past it.
    #[serde(default)]
    pub expires: Option<Text>,
}

/// `workload:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// The record schema file, relative to the scenario file.
    pub data: String,
    /// The arrival model: `{ rate: 200/s }`.
    pub arrival: ArrivalSpec,
    /// How long each stage runs, warm-up included (`30s`).
    pub duration: Text,
    /// The first part of each stage, measured but not judged (default `0s`).
    #[serde(default)]
    pub warmup: Option<Text>,
    /// How long one request may take before it counts as an error (default `2s`).
    #[serde(default)]
    pub timeout: Option<Text>,
}

/// `workload.arrival`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrivalSpec {
    /// Open model at a constant rate (`200/s`, `12000/m`).
    pub rate: Option<Text>,
}

/// One stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Unique name, used by criteria and reports.
    pub name: String,
    /// Flag states for this stage; unset flags take their default.
    #[serde(default)]
    pub flags: BTreeMap<String, Value>,
    /// The faults injected during this stage.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
}

/// One fault. Which parameters apply depends on `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// `latency`, `refuse`, `blackhole`, `reset`.
    pub kind: String,
    /// The dependency whose proxy applies the fault.
    pub at: String,
    /// Offset into the stage (default `0s`).
    #[serde(default)]
    pub from: Option<Text>,
    /// How long it lasts (default: to the stage's end).
    #[serde(default, rename = "for")]
    pub length: Option<Text>,
    /// Repeat period, for flapping faults.
    #[serde(default)]
    pub every: Option<Text>,
    /// Share of connections affected (default `100%`).
    #[serde(default)]
    pub probability: Option<Text>,
    /// `upstream`, `downstream` or `both` (default).
    #[serde(default)]
    pub direction: Option<String>,
    /// latency: how long each chunk is held.
    #[serde(default)]
    pub delay: Option<Text>,
    /// latency: the spread around `delay` (default `0ms`).
    #[serde(default)]
    pub jitter: Option<Text>,
    /// reset: bytes let through before the reset (default 0).
    #[serde(default)]
    pub after: Option<u64>,
}

/// A criterion in its map form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriterionMapSpec {
    /// `METRIC OP VALUE`.
    pub check: String,
    /// The stages it applies to (default: all).
    #[serde(default)]
    pub stages: Option<Vec<String>>,
    /// `enforce` (default), `warn` or `observe`.
    #[serde(default)]
    pub level: Option<String>,
    /// Fewer judged samples makes the criterion INCONCLUSIVE (default 100).
    #[serde(default)]
    pub min_samples: Option<u64>,
}
