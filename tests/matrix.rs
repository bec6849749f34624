//! The flag matrix: a stage expanded over flag values and fault sets. A cartesian
//! matrix runs every cell on the builtin pipeline and the report's grid shows each
//! cell's outcome with the criteria that failed in it; a pairwise matrix of four flags
//! with three values each is planned in at most 12 cells that cover every pair of
//! values, none of them an excluded combination.

mod common;

use std::collections::BTreeSet;

use common::{only_report, stagegate, text};

#[test]
fn every_cell_runs_and_the_grid_names_what_failed_in_each() {
    let reports = tempfile::tempdir().unwrap();
    let out = stagegate(&[
        "run",
        "tests/scenarios/matrix.yaml",
        "--report-dir",
        reports.path().to_str().unwrap(),
        "--report",
        "markdown",
        "--report",
        "html",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let report = only_report(reports.path());
    let m = &report["matrices"][0];
    assert_eq!(m["dimensions"], serde_json::json!(["new-enricher", "faults"]));
    let cells: Vec<(String, String)> = m["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["values"].to_string(), c["outcome"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        cells,
        [
            (r#"["false","none"]"#.to_string(), "passed".to_string()),
            (r#"["false","slow-store"]"#.to_string(), "passed".to_string()),
            (r#"["true","none"]"#.to_string(), "failed".to_string()),
            (r#"["true","slow-store"]"#.to_string(), "failed".to_string()),
        ]
    );
    for c in &m["cells"].as_array().unwrap()[2..] {
        let failed = c["failed"][0].as_str().unwrap();
        assert!(failed.starts_with("data.corrupted == 0 (measured "), "{failed}");
    }
    // The fault set is the cell's: applied in the slow-store cells only.
    let faulted: BTreeSet<&str> =
        report["faults"].as_array().unwrap().iter().map(|f| f["stage"].as_str().unwrap()).collect();
    assert_eq!(
        faulted,
        BTreeSet::from([
            "combos(new-enricher=false, faults=slow-store)",
            "combos(new-enricher=true, faults=slow-store)"
        ])
    );
    let dir = common::run_folders(reports.path()).remove(0);
    let markdown = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(
        markdown.contains("### Matrix `combos` (cartesian, 4 of 4 combinations): 2 passed, 2 failed"),
        "{markdown}"
    );
    assert!(markdown.contains("| true | slow-store | failed | data.corrupted == 0 (measured "), "{markdown}");
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<tr class=\"failed\"><td>true</td><td>slow-store</td>"), "the grid is in the HTML");
}

#[test]
fn a_pairwise_matrix_of_four_flags_with_three_values_covers_every_pair_in_at_most_12_cells() {
    let out = stagegate(&["plan", "tests/scenarios/matrix-pairwise.yaml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Each cell is a stage named by its values: `combos(region=eu, tier=basic, ...)`.
    let cells: Vec<Vec<(String, String)>> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("### ")?.split_once(". `combos(")?.1.strip_suffix(")`").map(str::to_string))
        .map(|inside| {
            inside
                .split(", ")
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_string(), v.to_string())
                })
                .collect()
        })
        .collect();
    assert!((9..=12).contains(&cells.len()), "{} cells:\n{stdout}", cells.len());
    assert!(stdout.contains(&format!("{} stages", cells.len())), "the plan counts the cells: {stdout}");
    assert!(stdout.contains("(pairwise; the full product has 81)"), "{stdout}");
    let values = [
        ("region", ["eu", "us", "ap"]),
        ("tier", ["basic", "gold", "platinum"]),
        ("cache", ["off", "local", "shared"]),
        ("codec", ["json", "avro", "proto"]),
    ];
    for cell in &cells {
        let names: Vec<&str> = cell.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["region", "tier", "cache", "codec"], "dimensions in the order written");
        assert!(!(cell[0].1 == "ap" && cell[1].1 == "platinum"), "an excluded combination was generated: {cell:?}");
    }
    for (i, (a, va)) in values.iter().enumerate() {
        for (b, vb) in &values[i + 1..] {
            for x in va {
                for y in vb {
                    if (*a, *x, *b, *y) == ("region", "ap", "tier", "platinum") {
                        continue;
                    }
                    let covered = cells
                        .iter()
                        .any(|c| c.iter().any(|(k, v)| k == a && v == x) && c.iter().any(|(k, v)| k == b && v == y));
                    assert!(covered, "no cell has {a}={x} with {b}={y}:\n{stdout}");
                }
            }
        }
    }
}
