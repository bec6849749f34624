//! The `flagd-file` provider: a flag file in flagd's format, rewritten at every stage.
//!
//! Each flag becomes a flagd flag whose variants are named after their values
//! (`"true"`, `"false"`, `"blue"`); a stage's fixed value is the default variant, and a
//! fractional exposure becomes flagd's `fractional` targeting (bucketed by flag key and
//! `targetingKey`, as stagegate buckets), with integer weights in basis points.
//! The file is written to a temporary name and renamed, so a reader never sees half of it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value, json};

use super::FlagState;

fn variant_name(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The flagd document for one stage's flag states.
pub fn document(states: &BTreeMap<String, FlagState>) -> Value {
    let mut flags = Map::new();
    for (key, state) in states {
        let mut variants = Map::new();
        for v in state.values() {
            variants.insert(variant_name(v), v.clone());
        }
        let mut flag = json!({ "state": "ENABLED", "variants": variants });
        match state {
            FlagState::Fixed(v) => flag["defaultVariant"] = json!(variant_name(v)),
            FlagState::Split { variants: shares, rest } => {
                flag["defaultVariant"] = json!(variant_name(rest));
                // flagd reads integer weights, relative to their sum: basis points keep
                // shares below 1% (a float weight makes flagd ignore the rule). With no
                // bucketing expression, flagd buckets by flag key and targeting key, as
                // stagegate does (`FlagState::value_for`): a key's cohort is the same.
                let (weights, total) = state.weights();
                let mut buckets: Vec<Value> =
                    shares.iter().zip(&weights).map(|((v, _), w)| json!([variant_name(v), w])).collect();
                let given: u64 = weights.iter().sum();
                buckets.push(json!([variant_name(rest), total.saturating_sub(given)]));
                flag["targeting"] = json!({ "fractional": buckets });
            }
        }
        flags.insert(key.clone(), flag);
    }
    json!({ "flags": flags })
}

/// Writes the flag file for `states` at `path`, atomically.
pub fn write(path: &Path, states: &BTreeMap<String, FlagState>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&document(states)).unwrap_or_default())?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_fractional_flags_in_flagd_form() {
        let states = BTreeMap::from([
            ("on".to_string(), FlagState::Fixed(json!(true))),
            ("split".to_string(), FlagState::Split { variants: vec![(json!("blue"), 0.1)], rest: json!("green") }),
        ]);
        let doc = document(&states);
        assert_eq!(doc["flags"]["on"]["defaultVariant"], "true");
        assert_eq!(doc["flags"]["on"]["variants"]["true"], true);
        assert_eq!(doc["flags"]["split"]["defaultVariant"], "green");
        assert_eq!(doc["flags"]["split"]["targeting"]["fractional"], json!([["blue", 1000], ["green", 9000]]));
    }
}
