//! An order service on PostgreSQL (a throwaway cluster that stagegate starts as a
//! `process` dependency, behind the fault proxy): exact lost, duplicated and corrupted
//! counts for known-bad variants of the service, zero for the good one, a latency fault
//! on the database that reaches the service's answers, and nothing left running after.
//!
//! Needs PostgreSQL and psycopg2 (`scripts/test` installs both).

mod common;

use common::{only_report, stagegate, text};

/// Whether any live process is in process group `pgid`.
fn group_alive(pgid: i64) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // After the `(comm)` field: state, ppid, pgrp.
        let rest: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
        rest.len() > 2 && rest[0] != "Z" && rest[2] == pgid.to_string()
    })
}

fn run(bad: Option<&str>) -> (std::process::Output, serde_json::Value, tempfile::TempDir) {
    common::require_postgres();
    common::require_python(&["psycopg2"], "psycopg2-binary");
    let dir = tempfile::tempdir().unwrap();
    let bad = bad.map(|b| format!(", --bad, {b}")).unwrap_or_default();
    let set = format!(
        r#"target.process.command=[python3, ../services/orders_pg_service.py, --port, "{{{{ port }}}}", --db, "{{{{ dependencies.db.address }}}}"{bad}]"#
    );
    let path = dir.path().to_str().unwrap();
    let out = stagegate(&["run", "-q", "--report-dir", path, "tests/scenarios/postgres-service.yaml", "--set", &set]);
    let report = only_report(dir.path());
    (out, report, dir)
}

fn total(report: &serde_json::Value, count: &str) -> u64 {
    report["stages"].as_array().unwrap().iter().map(|s| s["metrics"]["data"][count].as_u64().unwrap()).sum()
}

#[test]
fn the_good_service_on_postgres_loses_nothing_and_feels_the_slow_database() {
    let (out, report, dir) = run(None);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(total(&report, "acked"), 400);
    for count in ["lost", "duplicated", "corrupted"] {
        assert_eq!(total(&report, count), 0, "{count}");
    }
    // Three round trips to the database per order (begin, insert, commit), each 20 ms late.
    let p50 = report["stages"][1]["metrics"]["latency"]["p50"].as_f64().unwrap();
    assert!(p50 >= 60.0, "slow-db p50 {p50}");
    // The cluster and the service are gone, and so is the cluster's folder.
    let run = common::run_folders(dir.path())[0].clone();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(file["finished"], true);
    for p in file["processes"].as_array().unwrap() {
        assert!(!group_alive(p["pgid"].as_i64().unwrap()), "{p} is still running");
    }
    let log = std::fs::read_to_string(run.join("db.log")).unwrap();
    assert!(log.contains("database system is shut down"), "{log}");
}

#[test]
fn known_bad_variants_on_postgres_are_counted_exactly() {
    for (bad, count) in [("drop", "lost"), ("duplicate", "duplicated"), ("alter", "corrupted")] {
        let (out, report, _dir) = run(Some(bad));
        assert_eq!(out.status.code(), Some(1), "{bad}: {:?}", text(&out));
        // Every tenth of the 400 orders (200 a stage) is dropped, stored twice or altered.
        assert_eq!(total(&report, count), 40, "{bad}");
        let others: u64 =
            ["lost", "duplicated", "corrupted"].iter().filter(|c| **c != count).map(|c| total(&report, c)).sum();
        assert_eq!(others, 0, "{bad}");
    }
}
