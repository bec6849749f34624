//! Every scenario under `tests/invalid/` holds one mistake. Each must be refused with
//! exit code 2 by both `validate` and `run`, with a message pinned by a snapshot that
//! names file, line:column and key path; none may panic or start anything.

mod common;

use common::{root, stagegate, text};

#[test]
fn each_invalid_scenario_exits_2_with_a_located_message() {
    let mut files: Vec<_> = std::fs::read_dir(root().join("tests/invalid"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "the corpus shrank: {}", files.len());
    for path in files {
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let rel = format!("tests/invalid/{name}.yaml");
        let validate = stagegate(&["validate", &rel]);
        let (stdout, stderr) = text(&validate);
        assert_eq!(validate.status.code(), Some(2), "{name}: {stdout}{stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert!(stderr.starts_with(&format!("error: {rel}:")), "{name} does not name its file first: {stderr}");
        // Resolved paths are absolute: the checkout's folder is not part of the message.
        let stderr = stderr.replace(root().to_str().unwrap(), "<repo>");
        insta::assert_snapshot!(name.clone(), stderr);

        let reports = tempfile::tempdir().unwrap();
        let run = stagegate(&["run", &rel, "--report-dir", reports.path().to_str().unwrap()]);
        assert_eq!(run.status.code(), Some(2), "{name}");
        assert_eq!(std::fs::read_dir(reports.path()).unwrap().count(), 0, "{name}: a refused run wrote a report");
    }
}

#[test]
fn a_bad_schema_is_reported_in_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("bad.yaml");
    std::fs::write(&schema, "name: t\nkey: id\nfields:\n  id: { type: uuid }\n  n: { type: int, min: 5, max: 1 }\n")
        .unwrap();
    let out = stagegate(&["data", schema.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("bad.yaml:5:"), "{stderr}");
    assert!(stderr.contains("`fields.n.min`"), "{stderr}");
}

#[test]
fn bad_arguments_exit_2() {
    let out = stagegate(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    let out = stagegate(&["run", "scenarios/quickstart.yaml", "--seed", "many"]);
    assert_eq!(out.status.code(), Some(2));
    let out = stagegate(&["run", "no/such/file.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("no/such/file.yaml"));
}
