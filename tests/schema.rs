//! `stagegate schema` round trip: the printed JSON Schema accepts every example scenario
//! and rejects the invalid corpus where a schema can see the mistake. Mistakes that need
//! a cross-reference (a fault at an unknown dependency) or arithmetic (a fault starting
//! after the stage ends) are beyond a JSON Schema; each corpus file says which kind it
//! is in a `# schema:` line, and this test holds the schema to it.

mod common;

use std::path::Path;

use common::{root, stagegate};

fn schema() -> jsonschema::Validator {
    let out = stagegate(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
}

fn as_json(path: &Path) -> Option<serde_json::Value> {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).ok()
}

fn yaml_files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_schema_accepts_every_example() {
    let v = schema();
    let mut files = yaml_files("scenarios");
    files.extend(yaml_files("tests/scenarios"));
    files.extend(yaml_files("examples/orders-service"));
    assert!(files.len() >= 3);
    for f in files {
        let doc = as_json(&f).unwrap();
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", f.display());
    }
}

#[test]
fn the_schema_rejects_the_invalid_corpus_where_it_can_see_the_mistake() {
    let v = schema();
    for f in yaml_files("tests/invalid") {
        let text = std::fs::read_to_string(&f).unwrap();
        let marker = text
            .lines()
            .find_map(|l| l.strip_prefix("# schema: "))
            .unwrap_or_else(|| panic!("{} has no `# schema:` line", f.display()));
        let rejected = match as_json(&f) {
            None => true, // not even YAML
            Some(doc) => !v.is_valid(&doc),
        };
        let expected = marker.starts_with("rejects");
        assert_eq!(
            rejected,
            expected,
            "{}: the schema {} it, the file says `{marker}`",
            f.display(),
            if rejected { "rejects" } else { "accepts" }
        );
    }
}

/// Collects every property name of the schema, recursively.
fn property_names(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                out.extend(props.keys().cloned());
            }
            map.values().for_each(|x| property_names(x, out));
        }
        serde_json::Value::Array(list) => list.iter().for_each(|x| property_names(x, out)),
        _ => {}
    }
}

#[test]
fn the_format_reference_documents_every_key() {
    let out = stagegate(&["schema"]);
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names = std::collections::BTreeSet::new();
    property_names(&schema, &mut names);
    assert!(names.len() > 60, "{names:?}");
    let docs = std::fs::read_to_string(root().join("docs/format.md")).unwrap();
    let missing: Vec<&String> =
        names.iter().filter(|n| !docs.contains(&format!("`{n}`")) && !docs.contains(&format!(".{n}`"))).collect();
    assert!(missing.is_empty(), "docs/format.md does not mention: {missing:?}");
}

/// The fault catalog is one list in the code; the reference's table of fault kinds is
/// held to it: every kind the schema allows has its row, with the places it may go.
#[test]
fn the_format_reference_lists_every_fault_kind_with_its_places() {
    let out = stagegate(&["schema"]);
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<String> = schema["$defs"]["FaultSpec"]["properties"]["kind"]["enum"]
        .as_array()
        .expect("the schema lists the fault kinds")
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.len(), 16, "{kinds:?}");
    let docs = std::fs::read_to_string(root().join("docs/format.md")).unwrap();
    for kind in &kinds {
        let row = docs.lines().find(|l| l.starts_with(&format!("| `{kind}` |")));
        assert!(row.is_some(), "docs/format.md has no row for the fault kind `{kind}`");
    }
}
