//! The JSON Schema of `report.json` (`stagegate schema report`), generated from the
//! same types that write it, so that what a reader validates against is what stagegate
//! writes.

use serde_json::{Value, json};

use super::{REPORT_VERSION, RunReport};

/// The schema of a report of this layout version.
pub fn json_schema() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(RunReport)).unwrap_or_default();
    if let Some(map) = schema.as_object_mut() {
        map.insert("title".into(), format!("stagegate report.json, report_version {REPORT_VERSION}").into());
        map.insert(
            "description".into(),
            "The account of one stagegate run; fields are described in docs/reports.md.".into(),
        );
    }
    schema["properties"]["report_version"]["const"] = json!(REPORT_VERSION);
    schema
}
