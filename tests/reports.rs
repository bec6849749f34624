//! Reports where teams read them: one run writes JUnit (checked against the JUnit
//! schema CI systems accept, with xmllint), Markdown, a self-contained HTML page (opened
//! in headless Chromium: no console error, its charts drawn) and an HdrHistogram
//! interval log (read back with the crate's reader: the report's percentiles); a saved
//! run renders again; `stagegate compare` tells a regressed run from a repeat; report
//! paths are checked before a run; `-q`, a log and a terminal each get their progress.

mod common;

use std::path::Path;
use std::process::Command;

use common::{stagegate, text};
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

fn run_dir(reports: &Path) -> std::path::PathBuf {
    std::fs::read_dir(reports)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("report.json").exists() && !p.is_symlink())
        .expect("a run folder")
}

/// A tool the test needs, or a one-line say of how to get it.
fn tool(name: &str, package: &str) -> String {
    let found = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().unwrap();
    assert!(found.status.success(), "needs `{name}`: apt-get install {package} (scripts/test installs it)");
    String::from_utf8_lossy(&found.stdout).trim().to_string()
}

#[test]
fn one_run_writes_junit_markdown_html_and_an_interval_log_that_hold_up() {
    let reports = tempfile::tempdir().unwrap();
    let summary = reports.path().join("step-summary.md");
    let out = Command::new(common::bin())
        .args([
            "run",
            "scenarios/canary-compare.yaml",
            "--report-dir",
            reports.path().to_str().unwrap(),
            "--report",
            "junit",
            "--report",
            "markdown",
            "--report",
            "html",
            "--report",
            "hlog",
            "--set",
            common::RELAXED_HEALTH,
        ])
        .env("GITHUB_STEP_SUMMARY", &summary)
        .current_dir(common::root())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(matches!(out.status.code(), Some(0 | 1 | 3)), "{stdout}{stderr}");
    let dir = run_dir(reports.path());
    let latest = reports.path().join("latest");
    assert_eq!(std::fs::canonicalize(&latest).unwrap(), std::fs::canonicalize(&dir).unwrap(), "`latest` names the run");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    common::assert_matches_report_schema(&report);
    for f in ["junit.xml", "summary.md", "report.html", "latency.hlog"] {
        assert!(stdout.contains(&dir.join(f).display().to_string()), "the summary names {f}: {stdout}");
    }

    // JUnit: valid against the schema CI systems accept; one case per criterion.
    let xmllint = tool("xmllint", "libxml2-utils");
    let check = Command::new(xmllint)
        .args(["--noout", "--schema", "tests/schemas/junit.xsd"])
        .arg(dir.join("junit.xml"))
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    let criteria = report["assessments"].as_array().unwrap().len();
    // An INCONCLUSIVE run (a busy machine can make it one) adds a failed verdict case.
    let undecided = usize::from(report["verdict"] == "INCONCLUSIVE");
    assert_eq!(junit.matches("<testcase ").count(), criteria + undecided, "{junit}");
    if undecided == 1 {
        assert!(junit.contains("<testcase name=\"the verdict\"") && junit.contains("type=\"INCONCLUSIVE\""), "{junit}");
    }
    assert!(junit.contains("name=\"candidate: latency.p99 &lt; 250ms\""), "{junit}");

    // Markdown: the verdict first, here and in the step summary.
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    let verdict = report["verdict"].as_str().unwrap();
    assert!(md.lines().next().unwrap().contains(verdict), "{md}");
    assert!(md.contains("### Stages") && md.contains("| store-outage |"), "{md}");
    assert!(md.contains("](junit.xml)") && md.contains("](report.html)"), "{md}");
    assert_eq!(
        std::fs::read_to_string(&summary).unwrap(),
        md.replace(&files_section(&md), ""),
        "appended once, without links"
    );

    // The interval log: one interval per stage and variant, the report's percentiles.
    let log = std::fs::read(dir.join("latency.hlog")).unwrap();
    let mut tags = Vec::new();
    for entry in IntervalLogIterator::new(&log) {
        let LogEntry::Interval(i) = entry.unwrap() else { continue };
        let tag = i.tag().unwrap().as_str().to_string();
        let bytes = base64_decode(i.encoded_histogram());
        let h: hdrhistogram::Histogram<u64> =
            hdrhistogram::serialization::Deserializer::new().deserialize(&mut bytes.as_slice()).unwrap();
        if !tag.contains('/') {
            let stage = report["stages"].as_array().unwrap().iter().find(|s| s["name"] == tag.as_str()).unwrap();
            let p99 = stage["metrics"]["latency"]["p99"].as_f64().unwrap();
            assert_eq!(h.value_at_quantile(0.99) as f64 / 1000.0, p99, "{tag}");
            assert_eq!(h.len(), stage["metrics"]["requests"].as_u64().unwrap(), "{tag}");
        }
        tags.push(tag);
    }
    assert!(
        tags.contains(&"baseline".to_string()) && tags.contains(&"canary-10/new-enricher=true".to_string()),
        "{tags:?}"
    );

    // HTML: a real browser renders it with its charts and no console error.
    let chromium = tool("chromium", "chromium");
    let shot = dir.join("report.png");
    let page = format!("file://{}", dir.join("report.html").display());
    let profile = tempfile::tempdir().unwrap();
    let browse = |extra: &[&str]| {
        Command::new(&chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&page)
            .output()
            .unwrap()
    };
    let dom = browse(&["--dump-dom", "--virtual-time-budget=2000"]);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    let log = String::from_utf8_lossy(&dom.stderr);
    assert!(dom.status.success(), "{log}");
    let stages = report["stages"].as_array().unwrap().len();
    assert_eq!(dom_text.matches("<svg").count(), 4 * stages - 1, "four charts per stage, the first not against itself");
    assert!(dom_text.contains("latency over time"), "{dom_text}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE") || l.contains("Uncaught")).collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let screenshot = browse(&[&format!("--screenshot={}", shot.display()), "--window-size=1000,2400"]);
    assert!(screenshot.status.success(), "{}", String::from_utf8_lossy(&screenshot.stderr));
    assert!(std::fs::metadata(&shot).unwrap().len() > 20_000, "the screenshot is not blank");

    // The saved run renders again, the same.
    let again = reports.path().join("again.xml");
    let out = stagegate(&["report", dir.to_str().unwrap(), "--format", &format!("junit={}", again.display())]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(std::fs::read_to_string(&again).unwrap(), junit);
}

fn files_section(md: &str) -> String {
    md.find("\n### Files").map_or(String::new(), |i| md[i..].to_string())
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn tiny_run(reports: &Path, extra: &[&str]) -> std::path::PathBuf {
    let out_dir = reports.join(format!("run-{}", std::fs::read_dir(reports).map_or(0, |d| d.count())));
    let mut args = vec!["run", "-q", "tests/scenarios/tiny.yaml", "--out", out_dir.to_str().unwrap()];
    // tiny's baseline has a fault from 1 s on: a stage whose latency moves mid-way.
    args.extend_from_slice(&["--set", "workload.duration=6s"]);
    args.extend_from_slice(extra);
    let out = stagegate(&args);
    let (stdout, stderr) = text(&out);
    assert!(matches!(out.status.code(), Some(0 | 1 | 3)), "{stdout}{stderr}");
    out_dir
}

#[test]
fn compare_tells_a_regressed_run_from_a_repeat() {
    let reports = tempfile::tempdir().unwrap();
    let first = tiny_run(reports.path(), &[]);
    let repeat = tiny_run(reports.path(), &[]);
    let slower = tiny_run(reports.path(), &["--set", "stages[1].faults=[{kind: latency, at: store, delay: 30ms}]"]);

    // The faulted stage compares window against window, so its mid-stage step is no
    // drift. (+5 ms: the suite's parallel tests move a repeat by more than the 2 ms
    // default.)
    let same = stagegate(&["compare", first.to_str().unwrap(), repeat.to_str().unwrap(), "--max-regression", "+5ms"]);
    let (stdout, stderr) = text(&same);
    assert_eq!(same.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("no regression"), "{stdout}");

    let worse = stagegate(&["compare", first.to_str().unwrap(), slower.to_str().unwrap()]);
    let (stdout, stderr) = text(&worse);
    assert_eq!(worse.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("NEW regressed: latency in `candidate`"), "{stdout}");
    assert!(!stdout.contains("latency in `baseline`"), "the unchanged stage is not blamed: {stdout}");

    let other = stagegate(&["compare", first.to_str().unwrap(), "scenarios/quickstart.yaml"]);
    assert_eq!(other.status.code(), Some(2), "{:?}", text(&other));
}

#[test]
fn out_takes_an_empty_folder_as_is_and_refuses_a_used_one() {
    let reports = tempfile::tempdir().unwrap();
    let dir = tiny_run(reports.path(), &["--report", "junit"]);
    assert!(dir.join("report.json").exists() && dir.join("junit.xml").exists());
    let again = stagegate(&["run", "-q", "tests/scenarios/tiny.yaml", "--out", dir.to_str().unwrap()]);
    let (_, stderr) = text(&again);
    assert_eq!(again.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not empty"), "{stderr}");
    let bad = stagegate(&["run", "-q", "tests/scenarios/tiny.yaml", "--report", "pdf"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad).1.contains("formats are json, junit, markdown, html, hlog"), "{:?}", text(&bad));
}

#[test]
fn report_paths_are_checked_before_anything_runs() {
    let reports = tempfile::tempdir().unwrap();
    let root = reports.path().to_str().unwrap();
    let refused = |wanted: &[&str], says: &str| {
        let mut args = vec!["run", "tests/scenarios/tiny.yaml", "--report-dir", root];
        for w in wanted {
            args.extend_from_slice(&["--report", w]);
        }
        let out = stagegate(&args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{wanted:?}: {stdout}{stderr}");
        assert!(stderr.contains(says) && stderr.contains("nothing was run"), "{wanted:?}: {stderr}");
        assert!(common::run_folders(reports.path()).is_empty(), "{wanted:?} made a run folder");
    };
    refused(&["html=/nonexistent-folder/report.html"], "the folder /nonexistent-folder does not exist");
    refused(&["junit=../../no/such/place/junit.xml"], "does not exist");
    refused(&[&format!("html={root}")], "names a folder");
    refused(&["junit=summary.md", "markdown"], "is where the junit report goes");
    refused(&["html=report.json"], "is where the json report goes");
    refused(&["junit=run.json"], "a run's own record");
    refused(&["html=elsewhere/run.lock"], "a run's own record");
    refused(&["junit=../latest"], "`latest` is the link to the newest run");
    refused(&["junit=sub/."], "names a folder");
    refused(&["junit=/proc/stagegate.xml"], "cannot write in /proc");
    // Only a regular file is replaced: not a pipe, not a link (to a device, say).
    let elsewhere = tempfile::tempdir().unwrap();
    let fifo = elsewhere.path().join("pipe");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    refused(&[&format!("hlog={}", fifo.display())], "stagegate replaces only regular files");
    let link = elsewhere.path().join("to-null");
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    refused(&[&format!("junit={}", link.display())], "stagegate replaces only regular files");
    // Two names for one file, through a linked folder.
    let real = elsewhere.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, elsewhere.path().join("alias")).unwrap();
    refused(
        &[&format!("junit={}/x.xml", real.display()), &format!("html={}/alias/x.xml", elsewhere.path().display())],
        "is where the junit report goes",
    );
    // A job summary that cannot take the summary is found before the run, and a pipe
    // there is refused, not waited on.
    let out = Command::new(common::bin())
        .args(["run", "tests/scenarios/tiny.yaml", "--report-dir", root, "--report", "markdown"])
        .env("GITHUB_STEP_SUMMARY", &fifo)
        .current_dir(common::root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(text(&out).1.contains("GITHUB_STEP_SUMMARY"), "{:?}", text(&out));
    assert!(common::run_folders(reports.path()).is_empty(), "nothing ran");

    // Inside the run's folder, sub-folders are made; next to it, an existing folder is used.
    let beside = reports.path().join("beside.xml");
    let out = stagegate(&[
        "run",
        "tests/scenarios/tiny.yaml",
        "--report-dir",
        root,
        "--report",
        "html=deep/er/page.html",
        "--report",
        &format!("junit={}", beside.display()),
    ]);
    assert!(matches!(out.status.code(), Some(0 | 1 | 3)), "{:?}", text(&out));
    let run = run_dir(reports.path());
    assert!(run.join("deep/er/page.html").is_file());
    assert!(beside.is_file());
}

#[test]
fn quiet_prints_the_verdict_and_what_decided_it_and_a_log_gets_plain_progress() {
    let slow = ["--set", "stages[1].faults=[{kind: latency, at: store, delay: 40ms}]"];
    // Judged in the faulted stage only: a busy machine can push the baseline past 20ms too.
    let criteria = ["--set", r#"criteria=[{check: "latency.p99 < 20ms", min_samples: 20, stages: [candidate]}]"#];
    let reports = tempfile::tempdir().unwrap();
    let dir = reports.path().to_str().unwrap();
    let mut args = vec!["run", "-q", "tests/scenarios/tiny.yaml", "--report-dir", dir];
    args.extend_from_slice(&slow);
    args.extend_from_slice(&criteria);
    let out = stagegate(&args);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(stderr, "", "-q leaves stderr to errors");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "verdict: ROLLBACK  (seed 3)", "{stdout}");
    assert!(lines[1].contains("stage `candidate`: `latency.p99 < 20ms` failed: measured"), "{stdout}");
    // And the flag change that undoes it.
    assert!(lines[2].starts_with("rollback: set new-enricher true → false"), "{stdout}");
    assert!(lines[3].contains("rollback.flagd.json"), "{stdout}");
    assert_eq!(lines.len(), 4, "only the verdict, the failed criterion and the rollback plan: {stdout}");

    // Without -q and without a terminal: one plain progress line a second, with the
    // figures and the faults active.
    args.retain(|a| *a != "-q");
    let out = stagegate(&args);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let during = stderr
        .lines()
        .find(|l| l.starts_with("  candidate ") && l.contains("faults: latency at store"))
        .unwrap_or_else(|| panic!("no progress line during the fault: {stderr}"));
    assert!(during.contains("/2s") && during.contains("rate ") && during.contains("p99 "), "{during}");
    assert!(!stderr.contains('\r') && !stderr.contains("\x1b["), "a log gets no redrawing: {stderr}");
    assert!(stdout.contains("criteria\n"), "the full summary: {stdout}");
}

#[test]
fn on_a_terminal_the_progress_is_one_live_line() {
    // `script` (util-linux) gives the run a pseudo-terminal, as a person's shell would.
    let script = tool("script", "bsdutils");
    let reports = tempfile::tempdir().unwrap();
    let command = format!(
        "stty cols 80; {} run tests/scenarios/tiny.yaml --report-dir {} --set \
         'stages[1].faults=[{{kind: latency, at: store, delay: 5ms}}]'",
        common::bin().display(),
        reports.path().display()
    );
    let log = reports.path().join("tty.log");
    let out = Command::new(script)
        .args(["-qec", &command, log.to_str().unwrap()])
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let seen = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    assert!(seen.contains("\x1b[2K"), "the line is redrawn in place: {seen:?}");
    let live = seen
        .split(['\r', '\n'])
        .find(|l| l.contains(" stage 2 `candidate` 1/2s") && l.contains("faults: latency at"))
        .unwrap_or_else(|| panic!("no live line for the second stage with its fault: {seen:?}"));
    assert!(live.contains("/s  p99 ") && live.contains("errors 0"), "{live:?}");
    assert!(seen.contains("stage `candidate` finished"), "messages print above the live line: {seen:?}");
}

#[test]
fn a_hostile_saved_report_is_refused_or_rendered_within_bounds() {
    let reports = tempfile::tempdir().unwrap();
    let good = tiny_run(reports.path(), &[]);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(good.join("report.json")).unwrap()).unwrap();
    let variant = |name: &str, change: &dyn Fn(&mut serde_json::Value)| {
        let mut d = doc.clone();
        change(&mut d);
        let dir = reports.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("report.json"), d.to_string()).unwrap();
        dir
    };
    let render = |dir: &Path| {
        let mut child = Command::new(common::bin())
            .args(["report", dir.to_str().unwrap(), "--format", "html", "--format", "hlog", "--format", "markdown"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded: a crafted number must not spin the renderer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("`stagegate report {}` did not finish in 30 s", dir.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    };
    // Too many stages, a window at 1e300 s: refused as bad input, naming the field.
    let many = variant("many", &|d| d["stages"] = serde_json::Value::Array(vec![serde_json::json!({}); 5000]));
    let far = variant("far", &|d| d["stages"][0]["windows"][0]["from_secs"] = serde_json::json!(1e300));
    let negative = variant("negative", &|d| d["stages"][1]["metrics"]["latency"]["p50"] = serde_json::json!(-1.7e308));
    // A histogram whose header asks for 5 digits up to 2^62 (tens of MiB to decode).
    let bomb = {
        use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
        let h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 1 << 62, 5).unwrap();
        let mut bytes = Vec::new();
        V2DeflateSerializer::new().serialize(&h, &mut bytes).unwrap();
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
    };
    let bombed = variant("bomb", &|d| d["stages"][0]["histograms"][0]["encoded"] = serde_json::json!(bomb.clone()));
    for (dir, says) in [
        (many, "5000 stages, more than the 1000"),
        (far, "stages[0].windows[0].from_secs"),
        (negative, "stages[1].metrics.latency.p50"),
        (bombed, "a histogram beyond stagegate's own"),
    ] {
        let out = render(&dir);
        assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
        assert!(text(&out).1.contains(says), "{:?}", text(&out));
    }
    // Markup where a seed or a stage name should be: escaped.
    let huge = variant("huge", &|d| {
        d["seed"] = serde_json::json!("<script>alert(1)</script>");
        d["stages"][0]["name"] = serde_json::json!("[x](javascript:alert(1)) <img src=x>");
    });
    let out = render(&huge);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let html = std::fs::read_to_string(huge.join("report.html")).unwrap();
    assert!(!html.contains("<script") && !html.contains("<img"), "markup escaped");
    let md = std::fs::read_to_string(huge.join("summary.md")).unwrap();
    assert!(!md.contains("<script") && !md.contains("<img") && !md.contains("[x](javascript"), "{md}");
}
