//! The JSON Schema of the scenario format, generated from the same raw types that load
//! it, so that editors can complete and check scenario files (`stagegate schema`).
//!
//! The derive gives the shape (keys, types, required keys, units as patterns). Rules
//! that tie keys together are added here from the same tables the loader checks with:
//! which parameters each fault kind takes and where it may go, which metrics a check may
//! name, one form per dependency and arrival model. What needs a cross-reference (a
//! fault at an unknown dependency) or arithmetic (a fault starting after the stage ends)
//! stays with `stagegate validate`.

use serde_json::{Value, json};

use super::spec::ScenarioSpec;
use crate::fault::catalog::{self, KINDS, PARAMETERS};
use crate::verdict::Metric;

/// A pattern for `METRIC OP VALUE` naming a known metric.
fn check_pattern() -> String {
    let mut names: Vec<String> = Metric::names().iter().map(|n| n.replace('.', "\\.")).collect();
    // A query of the `metrics:` section, by its name.
    names.push(r"prom\.[a-z_][a-z0-9_]{0,63}(\.(mean|max|min|last))?".to_string());
    format!(r"^\s*((before|during|after)\.)?({})\s*(<=|>=|==|!=|<|>)\s*\S.*$", names.join("|"))
}

fn fault_rules() -> Value {
    let mut rules = Vec::new();
    for k in KINDS {
        let (kind, on_dep, on_target, on_workload) = (k.name, k.at_dependency, k.at_target, k.at_workload);
        let (required, optional) = (k.required, k.optional);
        let mut props = serde_json::Map::new();
        for p in PARAMETERS {
            if !required.contains(&p) && !optional.contains(&p) {
                props.insert(p.to_string(), Value::Bool(false));
            }
        }
        let at = match (on_dep, on_target, on_workload) {
            (false, false, true) => json!({ "const": "workload" }),
            (true, false, false) => json!({ "not": { "enum": ["target", "workload"] } }),
            _ => json!({ "not": { "const": "workload" } }),
        };
        props.insert("at".into(), at);
        if !k.has_direction() {
            props.insert("direction".into(), Value::Bool(false));
        }
        rules.push(json!({
            "if": { "properties": { "kind": { "const": kind } }, "required": ["kind"] },
            "then": { "required": required, "properties": props }
        }));
    }
    Value::Array(rules)
}

/// Where a key of the format belongs, in words, for hints on a key found in the wrong
/// place (usually indented too far or not enough): `a stage`, `` `workload` ``.
pub fn sections_with(key: &str) -> Vec<&'static str> {
    const SECTIONS: [(&str, &str); 20] = [
        ("ScenarioSpec", "the top level"),
        ("TargetSpec", "`target`"),
        ("HttpTargetSpec", "`target.http`"),
        ("RequestSpec", "a request (`write`, `read`)"),
        ("ProcessSpec", "a `process`"),
        ("ReadySpec", "`ready`"),
        ("DependencySpec", "a dependency"),
        ("ContainerSpec", "a `container`"),
        ("FlagsSpec", "`flags`"),
        ("FlagDefSpec", "a flag definition"),
        ("WorkloadSpec", "`workload`"),
        ("ArrivalSpec", "`workload.arrival`"),
        ("RampStepSpec", "a ramp step"),
        ("SpikeSpec", "`spike`"),
        ("DailySpec", "`daily`"),
        ("StageSpec", "a stage"),
        ("FaultSpec", "a fault"),
        ("MatchSpec", "`match`"),
        ("CriterionMapSpec", "a criterion"),
        ("OnVerdictSpec", "`on_verdict`"),
    ];
    let schema = serde_json::to_value(schemars::schema_for!(ScenarioSpec)).unwrap_or_default();
    SECTIONS
        .iter()
        .filter(|(def, _)| {
            let node = if *def == "ScenarioSpec" { &schema } else { &schema["$defs"][def] };
            node["properties"].get(key).is_some()
        })
        .map(|(_, words)| *words)
        .collect()
}

/// A hint for `key` found where it does not belong, if it belongs somewhere else.
pub fn misplaced_hint(key: &str) -> Option<String> {
    let places = sections_with(key);
    (!places.is_empty()).then(|| format!("`{key}` is a key of {}: is it indented right?", places.join(" or ")))
}

/// The schema as a JSON value.
pub fn json_schema() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(ScenarioSpec)).expect("a schema serialises");
    let check = json!({ "type": "string", "pattern": check_pattern() });
    if let Some(map) = schema.as_object_mut() {
        map.insert("title".into(), "stagegate scenario, format version 1".into());
    }
    let defs = &mut schema["$defs"];
    for one_form in ["DependencySpec", "ArrivalSpec"] {
        defs[one_form]["minProperties"] = json!(1);
        defs[one_form]["maxProperties"] = json!(1);
    }
    defs["DependencySpec"]["properties"]["external"]["pattern"] = json!(r"^.+:[0-9]{1,5}$");
    let fault = &mut defs["FaultSpec"];
    fault["properties"]["kind"]["enum"] = json!(catalog::names());
    fault["allOf"] = fault_rules();
    fault["dependentRequired"] = json!({ "every": ["for"] });
    let crit = &mut defs["CriterionMapSpec"];
    crit["oneOf"] = json!([{ "required": ["check"] }, { "required": ["compare"] }]);
    crit["dependentRequired"] = json!({ "compare": ["stage", "baseline"] });
    crit["properties"]["check"] = json!({ "anyOf": [check.clone(), { "type": "null" }] });
    crit["properties"]["confidence"] = json!({
        "description": "Confidence of the statistical test, e.g. `95%`. Default `95%`.",
        "anyOf": [
            { "type": "string", "pattern": r"^\s*(5[0-9]|[6-9][0-9])(\.[0-9]+)?\s*%\s*$" },
            { "type": "number", "minimum": 0.5, "exclusiveMaximum": 1 },
            { "type": "null" }
        ]
    });
    if let Some(any) = defs["CriterionSpec"]["anyOf"].as_array_mut() {
        for branch in any.iter_mut() {
            if branch["type"] == "string" {
                let description = branch["description"].clone();
                *branch = check.clone();
                branch["description"] = description;
            }
        }
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_pattern_knows_every_metric() {
        let re = check_pattern();
        // A light check without a regex engine: every metric appears in the pattern.
        for name in Metric::names() {
            assert!(re.contains(&name.replace('.', "\\.")), "{name}");
        }
    }
}
