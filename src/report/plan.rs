//! `stagegate plan`: the rollout plan as Markdown, before anything runs; with
//! `--runbook`, the same as a game-day room's runbook.
//!
//! Stages in order with their flag states, the fault timeline of each stage, the
//! expected record counts from the arrival model, the criteria that judge each stage,
//! and what each verdict triggers.

use std::fmt::Write;

use crate::fault::{Direction, Fault, FaultKind, Place};
use crate::scenario::Plan;
use crate::scenario::units::format_duration;
use crate::sut::Target;
use crate::verdict::{self, Rule};
use crate::workload::Arrival;

fn params(f: &Fault) -> String {
    match &f.kind {
        FaultKind::Latency { delay, jitter } => {
            let spread = |times: u32| match jitter.is_zero() {
                true => format_duration(*delay * times),
                false => format!("{} ± {}", format_duration(*delay * times), format_duration(*jitter * times)),
            };
            // The added delay a caller sees: once per request when held per request, else
            // once per direction the stream is held in.
            let (times, per) = if stream_fault(f) {
                (if f.direction == Direction::Both { 2 } else { 1 }, "per round trip")
            } else {
                (1, "per request")
            };
            format!("delay {} (+{} {per})", spread(1), spread(times))
        }
        FaultKind::Bandwidth { bytes_per_sec } => format!("{bytes_per_sec} B/s"),
        FaultKind::Reset { after: Some(n) } => format!("after {n} bytes"),
        FaultKind::SlowClose { delay } => format!("close held {}", format_duration(*delay)),
        FaultKind::Slicer { size, size_variation, delay } => {
            format!("slices of {size}±{size_variation} B, {} apart", format_duration(*delay))
        }
        FaultKind::LimitData { bytes } => format!("closed after {bytes} bytes"),
        FaultKind::Corrupt { rate } => format!("{:.3}% of bytes", rate * 100.0),
        FaultKind::HttpError { status, .. } => format!("status {status}"),
        FaultKind::Kill { signal, restart_after } => match restart_after {
            Some(r) => format!("{signal}, restarted after {}", format_duration(*r)),
            None => signal.clone(),
        },
        FaultKind::OutOfOrder { window } => format!("window {window}"),
        FaultKind::Late { delay } => format!("event time {} earlier", format_duration(*delay)),
        _ => String::new(),
    }
}

/// Whether `f` acts on a byte stream in a TCP proxy, where `direction` applies (not
/// `refuse`, which acts on whole connections).
fn stream_fault(f: &Fault) -> bool {
    f.kind.runs_in_proxy()
        && !matches!(f.kind, FaultKind::Refuse)
        && !crate::fault::gate::per_request(f, f.at == Place::Target)
}

/// A command as a shell would take it back: arguments with spaces or quotes are quoted.
pub fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A rate as a scenario writes it: `150/s`, `12.5/s`.
fn rate(r: f64) -> String {
    if r.fract() == 0.0 { format!("{r:.0}/s") } else { format!("{r:.1}/s") }
}

/// A path without `dir/..` detours, for display.
fn tidy(path: &std::path::Path) -> String {
    let mut out: Vec<std::path::Component> = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir if matches!(out.last(), Some(std::path::Component::Normal(_))) => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out.iter().collect::<std::path::PathBuf>().display().to_string()
}

/// The plan of `plan` as Markdown.
pub fn markdown(plan: &Plan) -> String {
    let mut s = String::new();
    let w = &plan.workload;
    let _ = writeln!(s, "# Rollout plan: {}\n", plan.name);
    if let Some(d) = &plan.description {
        let _ = writeln!(s, "> {d}\n");
    }
    let _ = writeln!(s, "- scenario: `{}`", plan.file.display());
    let _ = writeln!(s, "- seed: {} (from {})", plan.seed, plan.seed_source);
    for o in &plan.overrides {
        let _ = writeln!(s, "- override: `--set {o}`");
    }
    match &plan.target {
        Target::Builtin(_, defects) => {
            let names = defects.names();
            let said = if names.is_empty() { "none".to_string() } else { names.join(", ") };
            let _ = writeln!(s, "- target: the builtin `orders-pipeline` (the candidate path's defects: {said})");
        }
        Target::Http(h) => {
            let started = if h.process.is_some() { ", started by stagegate" } else { "" };
            let _ = writeln!(s, "- target: HTTP at `{}`{started}", h.base_url);
        }
    }
    for d in &plan.dependencies {
        let _ = writeln!(s, "- dependency `{}`: {}, behind a fault proxy", d.name, d.provision.kind());
    }
    let _ = writeln!(s, "- flags: served by `{}`", plan.flags.provider.name());
    for f in &plan.flags.definitions {
        let meta: Vec<String> = [
            f.category.map(|c| format!("{c:?}").to_lowercase()),
            f.owner.as_ref().map(|o| format!("owner {o}")),
            f.expires.map(|e| format!("expires {e}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        let _ = writeln!(
            s,
            "  - `{}` ({:?}, default {}){}",
            f.key,
            f.kind,
            f.default,
            if meta.is_empty() { String::new() } else { format!(": {}", meta.join(", ")) }
        );
    }
    let arrival = match &w.arrival {
        Arrival::Open(p) if p.points.len() == 1 => format!("open model, constant {}", rate(p.points[0].1)),
        Arrival::Open(p) => {
            let from = p.playbook.as_ref().map(|b| format!(" from playbook `{b}`")).unwrap_or_default();
            format!("open model, {} shape{from}, peak {}", p.shape, rate(p.peak()))
        }
        Arrival::Closed { concurrency } => format!("closed model, {concurrency} requests in flight"),
    };
    let _ = writeln!(
        s,
        "- workload: records from `{}` (schema `{}`, key `{}`), {arrival}; each stage runs {} with {} of warm-up (measured, not judged); request timeout {}",
        tidy(&w.data_file),
        w.schema.name,
        w.schema.key,
        format_duration(w.duration),
        format_duration(w.warmup),
        format_duration(w.timeout)
    );
    // Records judged after warm-up in a stage of `duration`, under an open model.
    let judged = |duration: std::time::Duration| match &w.arrival {
        Arrival::Open(p) => {
            Some((p.expected(duration.as_secs_f64()) - p.expected(w.warmup.as_secs_f64())).max(0.0).round() as u64)
        }
        Arrival::Closed { .. } => None,
    };
    let expected = |duration: std::time::Duration| match (&w.arrival, judged(duration)) {
        (Arrival::Open(p), Some(j)) => {
            format!("{} records ({j} judged after warm-up)", p.expected(duration.as_secs_f64()).round() as u64)
        }
        _ => "as many records as the target answers (closed model)".to_string(),
    };
    let total: std::time::Duration = plan.stages.iter().map(|st| st.duration).sum();
    let _ = writeln!(s, "\n## Stages\n");
    let _ = writeln!(s, "{} stages, {} of load in all (at most).\n", plan.stages.len(), format_duration(total));
    for (i, st) in plan.stages.iter().enumerate() {
        let _ = writeln!(s, "### {}. `{}`\n", i + 1, st.name);
        let flags: Vec<String> = st.flags.iter().map(|(k, v)| format!("`{k}` = {}", v.describe())).collect();
        let _ = writeln!(s, "- flags: {}", if flags.is_empty() { "none".into() } else { flags.join(", ") });
        if st.duration != w.duration {
            let _ = writeln!(s, "- runs {}", format_duration(st.duration));
        }
        let _ = writeln!(s, "- expected load: {}", expected(st.duration));
        if let Some(c) = &st.cell {
            let values: Vec<String> = c.values.iter().map(|(d, v)| format!("{d}={v}")).collect();
            let _ = writeln!(
                s,
                "- matrix `{}`, cell {} of {} ({}; the full product has {}): {}",
                c.group,
                c.index + 1,
                c.cells,
                format!("{:?}", c.mode).to_lowercase(),
                c.product,
                values.join(", ")
            );
        }
        if let Some(step) = &st.exposure {
            let least = verdict::applicable(&plan.criteria, &st.name).iter().map(|c| c.min_samples).max();
            let cohort = match judged(st.duration) {
                Some(j) => {
                    let n = (j as f64 * step.share).round() as u64;
                    let thin = match least {
                        Some(m) if n < m && step.share < 1.0 => {
                            format!(": fewer than the {m} samples a criterion needs, so this step will be INCONCLUSIVE")
                        }
                        _ => String::new(),
                    };
                    format!("about {n} judged records in the `{}` cohort{thin}", step.cohort())
                }
                None => "the cohort's size depends on how fast the target answers (closed model)".to_string(),
            };
            let _ = writeln!(
                s,
                "- exposure `{}`, step {} of {}: `{}` = {} for {} of records; {cohort}; stops here if a criterion fails",
                step.group,
                step.index + 1,
                step.steps,
                step.flag,
                step.value,
                crate::scenario::units::format_share(step.share)
            );
        }
        if st.faults.is_empty() {
            let _ = writeln!(s, "- faults: none");
        } else {
            let _ = writeln!(s, "- fault timeline:\n");
            let _ = writeln!(s, "  | fault | at | parameters | active | probability | direction |");
            let _ = writeln!(s, "  | --- | --- | --- | --- | --- | --- |");
            for f in &st.faults {
                let windows = f.schedule.windows(st.duration);
                let active: Vec<String> = windows
                    .iter()
                    .take(4)
                    .map(|(a, b)| format!("{}–{}", format_duration(*a), format_duration(*b)))
                    .collect();
                let more = if windows.len() > 4 { format!(" (+{} more)", windows.len() - 4) } else { String::new() };
                let _ = writeln!(
                    s,
                    "  | {} | `{}` | {} | {}{more} | {:.0}% | {} |",
                    f.kind.name(),
                    f.at,
                    params(f),
                    active.join(", "),
                    f.probability * 100.0,
                    if stream_fault(f) { format!("{:?}", f.direction).to_lowercase() } else { "–".into() }
                );
            }
            let _ = writeln!(s);
        }
        let judged: Vec<String> =
            verdict::applicable(&plan.criteria, &st.name).iter().map(|c| format!("`{}`", c.text)).collect();
        let compares: Vec<String> = plan
            .criteria
            .iter()
            .filter(|c| matches!(&c.rule, Rule::Compare(cmp) if cmp.stage == st.name))
            .map(|c| format!("`{}`", c.text))
            .collect();
        let all: Vec<String> = judged.into_iter().chain(compares).collect();
        let _ = writeln!(s, "- judged by: {}\n", if all.is_empty() { "nothing".into() } else { all.join(", ") });
    }
    let _ = writeln!(s, "## Criteria\n");
    if plan.criteria.is_empty() {
        let _ = writeln!(s, "None: with nothing to judge, every run ends in PROMOTE.\n");
    }
    for c in &plan.criteria {
        let scope = match (&c.rule, &c.stages) {
            (Rule::Compare(_), _) => String::new(),
            (_, None) => " in every stage".into(),
            (_, Some(list)) => format!(" in {}", list.iter().map(|x| format!("`{x}`")).collect::<Vec<_>>().join(", ")),
        };
        let mut extra = vec![format!("{:?}", c.level).to_lowercase(), format!("min {} samples", c.min_samples)];
        if let Rule::Compare(cmp) = &c.rule {
            extra.push(format!("max regression {}", cmp.tolerance.text(cmp.metric)));
            extra.push(format!("confidence {:.0}%", cmp.confidence * 100.0));
        }
        if c.abort_on_fail {
            extra.push("aborts the run on failure".into());
        }
        let _ = writeln!(s, "- `{}`{scope} ({})", c.text, extra.join(", "));
    }
    let _ = writeln!(s, "\n## On each verdict\n");
    let _ = writeln!(s, "| verdict | exit code | action |");
    let _ = writeln!(s, "| --- | --- | --- |");
    let action =
        |cmd: &Option<Vec<String>>| cmd.as_ref().map_or("none".to_string(), |c| format!("`{}`", shell_words(c)));
    let _ = writeln!(s, "| PROMOTE | 0 | {} |", action(&plan.on_verdict.promote));
    let _ = writeln!(s, "| ROLLBACK | 1 | {} |", action(&plan.on_verdict.rollback));
    let _ = writeln!(s, "| INCONCLUSIVE | 3 | {} |", action(&plan.on_verdict.inconclusive));
    if !plan.warnings.is_empty() {
        let _ = writeln!(s, "\n## Warnings\n");
        for w in &plan.warnings {
            let _ = writeln!(s, "- {w}");
        }
    }
    s
}

/// `stagegate plan --runbook`: the rehearsal as a game-day room runs it, step by step:
/// when each stage starts and what it turns on, what to watch (its criteria, and the
/// `/metrics` series that show them live), how to abort at any moment, and the flag
/// change that rolls back if the stage fails (to the last earlier stage with other
/// flags, assuming it held; to the defaults before the first).
pub fn runbook(plan: &Plan, file: &std::path::Path) -> String {
    let mut s = String::new();
    let total: std::time::Duration = plan.stages.iter().map(|st| st.duration).sum();
    let _ = writeln!(s, "# Game-day runbook: {}\n", plan.name);
    if let Some(d) = &plan.description {
        let _ = writeln!(s, "> {d}\n");
    }
    // The run this runbook describes: its seed and every `--set` it was printed with.
    let mut words = vec!["stagegate".to_string(), "run".into(), file.display().to_string()];
    words.extend(["--seed".into(), plan.seed.to_string()]);
    for o in &plan.overrides {
        words.extend(["--set".into(), o.clone()]);
    }
    words.extend(["--metrics".into(), "127.0.0.1:9464".into(), "--ui".into(), "127.0.0.1:8470".into()]);
    let command = shell_words(&words);
    let _ = writeln!(s, "## Before\n");
    let _ = writeln!(s, "- Start: `{command}` (seed {}).", plan.seed);
    let _ = writeln!(
        s,
        "- It runs {} stages, about {} of load, plus start-up and a read-back of the output after each stage.",
        plan.stages.len(),
        format_duration(total)
    );
    let _ = writeln!(
        s,
        "- Dashboards: scrape `http://127.0.0.1:9464/metrics` (`stagegate_stage_running`, `stagegate_fault_active`, `stagegate_request_duration_seconds`, `stagegate_requests_total`)."
    );
    let _ = writeln!(
        s,
        "- Live page: `http://127.0.0.1:8470/` with the `#token=` stagegate prints at start: the stage, its flags, latency and errors each second, active faults, the criteria as they stand. With the token: **Hold** (the stage runs longer), **Advance** (the next stage now), **Abort**, or start a fault for a while; every action is in `steering.jsonl`."
    );
    let on_abort = match plan.on_abort {
        crate::verdict::Verdict::Rollback => "ROLLBACK",
        _ => "INCONCLUSIVE",
    };
    let _ = writeln!(
        s,
        "- **Abort at any moment:** the page's Abort button, or `curl -X POST -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:8470/api/abort`: every fault is lifted, everything stagegate started is stopped, the report is written, and the verdict is {on_abort} unless a criterion already failed (`steering.on_abort`). Without the page: Ctrl-C in stagegate's terminal (or `kill -TERM` its process), the report marked interrupted; a second Ctrl-C stops at once, still lifting faults.\n"
    );
    let defaults: std::collections::BTreeMap<String, crate::flags::FlagState> = plan
        .flags
        .definitions
        .iter()
        .map(|d| (d.key.clone(), crate::flags::FlagState::Fixed(d.default.clone())))
        .collect();
    let mut at = std::time::Duration::ZERO;
    for (i, st) in plan.stages.iter().enumerate() {
        let _ = writeln!(
            s,
            "## Step {}. `{}` (from about +{}, for {})\n",
            i + 1,
            st.name,
            clock(at),
            format_duration(st.duration)
        );
        let flags: Vec<String> = st.flags.iter().map(|(k, v)| format!("`{k}` = {}", v.describe())).collect();
        let _ = writeln!(s, "- Flags: {}.", if flags.is_empty() { "none".into() } else { flags.join(", ") });
        if !plan.workload.warmup.is_zero() {
            let _ =
                writeln!(s, "- The first {} are warm-up: measured, not judged.", format_duration(plan.workload.warmup));
        }
        for f in &st.faults {
            for (from, to) in f.schedule.windows(st.duration).iter().take(4) {
                let _ = writeln!(
                    s,
                    "- At +{} (stage +{}): **{}** at `{}` ({}) until stage +{}.",
                    clock(at + *from),
                    format_duration(*from),
                    f.kind.name(),
                    f.at,
                    params(f),
                    format_duration(*to)
                );
            }
        }
        let watch: Vec<String> =
            verdict::applicable(&plan.criteria, &st.name).iter().map(|c| format!("`{}`", c.text)).collect();
        let _ = writeln!(
            s,
            "- Watch: {}.",
            if watch.is_empty() { "nothing is judged here".into() } else { watch.join(", ") }
        );
        let _ = writeln!(
            s,
            "  Live: `stagegate_request_duration_seconds{{stage=\"{0}\"}}`, `stagegate_requests_total{{stage=\"{0}\"}}`.",
            st.name
        );
        let back = plan.stages[..i].iter().rev().find(|p| p.flags != st.flags);
        let (to, whence, same) = match back {
            Some(p) => (&p.flags, format!("as in `{}`", p.name), format!("the flags of `{}`", p.name)),
            None => (&defaults, "the flags' defaults".to_string(), "the flags' defaults".to_string()),
        };
        let changes: Vec<String> = st
            .flags
            .iter()
            .filter_map(|(k, now)| {
                let then = to.get(k)?;
                (then != now).then(|| format!("`{k}` {} → {}", now.describe(), then.describe()))
            })
            .collect();
        if changes.is_empty() {
            let _ = writeln!(
                s,
                "- If it fails: no flag change undoes it (it runs with {same}); look at the faults and the system.\n"
            );
        } else {
            let _ = writeln!(
                s,
                "- If it fails, roll back: set {} ({whence}). The run's `rollback.flagd.json` holds it for flagd.\n",
                changes.join(", ")
            );
        }
        at += st.duration;
    }
    let _ = writeln!(s, "## After\n");
    let _ = writeln!(
        s,
        "- The verdict is printed and in `reports/latest/report.json`; exit 0 PROMOTE, 1 ROLLBACK, 3 INCONCLUSIVE. A ROLLBACK names the flag change to make."
    );
    if let Some(cmd) = &plan.on_verdict.rollback {
        let _ = writeln!(s, "- On ROLLBACK stagegate runs `{}` itself.", shell_words(cmd));
    }
    s
}

/// An offset from the run's start as `m:ss`.
fn clock(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    format!("{}:{:02}", secs / 60, secs % 60)
}
