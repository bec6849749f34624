//! The JSON Schema of the scenario format, generated from the same raw types that load
//! it, so that editors can complete and check scenario files (`stagegate schema`).
//!
//! The schema checks shape (keys, types, required keys); value checks that need units
//! or cross-references (`150` without a unit, a fault at an unknown dependency) stay with
//! `stagegate validate`.

use super::spec::ScenarioSpec;

/// The schema as a JSON value.
pub fn json_schema() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(ScenarioSpec)).expect("a schema serialises");
    if let Some(map) = schema.as_object_mut() {
        map.insert("title".into(), "stagegate scenario, format version 1".into());
    }
    schema
}
