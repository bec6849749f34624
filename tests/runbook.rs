//! `stagegate plan --runbook`: a game-day room's runbook, step by step: when each stage
//! starts and what faults it turns on, what to watch, how to abort, and the flag change
//! that rolls each stage back (for a progressive exposure, to the step before).

mod common;

use common::{stagegate, text};

#[test]
fn the_runbook_times_each_step_and_names_its_faults_watch_list_abort_and_rollback() {
    let out = stagegate(&["plan", "--runbook", "scenarios/quickstart.yaml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for said in [
        "- Start: `stagegate run scenarios/quickstart.yaml --seed 42 --metrics 127.0.0.1:9464 --ui 127.0.0.1:8470` (seed 42).",
        "**Abort at any moment:** the page's Abort button",
        "/api/abort",
        "Ctrl-C in stagegate's terminal",
        "## Step 3. `slow-store` (from about +0:16, for 8s)",
        "- At +0:18 (stage +2s): **latency** at `store`",
        "- Watch: `errors.rate < 1%`, `data.lost == 0`, `data.duplicated == 0`, `data.corrupted == 0`, `latency.p99 < 400ms`.",
        "- If it fails, roll back: set `new-enricher` true → false (as in `baseline`).",
        "- If it fails: no flag change undoes it (it runs with the flags' defaults)",
    ] {
        assert!(stdout.contains(said), "the runbook lacks {said:?}:\n{stdout}");
    }
    // The start command is the run described: its seed and overrides.
    let out =
        stagegate(&["plan", "--runbook", "scenarios/quickstart.yaml", "--seed", "3", "--set", "workload.duration=6s"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("`stagegate run scenarios/quickstart.yaml --seed 3 --set workload.duration=6s --metrics"),
        "{stdout}"
    );
    let out = stagegate(&["plan", "--runbook", "scenarios/progressive-rollout.yaml"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains(
            "- If it fails, roll back: set `new-enricher` true 50% / false rest → true 20% / false rest (as in `rollout@20%`)."
        ),
        "{stdout}"
    );
}
