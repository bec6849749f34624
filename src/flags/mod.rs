//! Feature flags: their definitions (with governance metadata) and the provider that
//! hands each stage's flag state to the system under test.
//!
//! [`FlagSet`] is the checked `flags:` section. The provider implemented here is OFREP
//! ([`ofrep`]): stagegate serves the OpenFeature Remote Evaluation Protocol on loopback
//! and changes its answers at each stage boundary.

pub mod ofrep;

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
            FlagType::Integer => value.is_i64() || value.is_u64(),
            FlagType::Number => value.is_number(),
            FlagType::Object => value.is_object(),
        }
    }
}

/// What a flag is for (governance metadata, reported, not acted on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Operational,
    Experimental,
    Release,
    Permission,
}

/// How flag states reach the system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    /// stagegate serves OFREP; the system under test evaluates flags over HTTP.
    #[default]
    Ofrep,
}

/// One flag definition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagDef {
    pub key: String,
    pub kind: FlagType,
    pub default: Value,
    pub category: Option<Category>,
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
    /// The full state of every flag in a stage: the stage's values over the defaults.
    pub fn state(&self, overrides: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
        self.definitions
            .iter()
            .map(|d| {
                (
                    d.key.clone(),
                    overrides
                        .get(&d.key)
                        .cloned()
                        .unwrap_or_else(|| d.default.clone()),
                )
            })
            .collect()
    }
}
