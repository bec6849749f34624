//! The `criteria` section (checks and comparisons) and `on_verdict`.

use serde_json::{Map, Value};

use super::super::spec::*;
use super::super::yaml::{join_index, join_key};
use super::super::{OnVerdict, Stage, units};
use super::Ctx;
use crate::verdict::{Compare, CompareMetric, Criterion, DEFAULT_MIN_SAMPLES, Level, Rule, Tolerance, parse_check};

/// A latency comparison's tolerance when none is given: noise alone moves a service's
/// median by a few percent from run to run.
const DEFAULT_LATENCY_TOLERANCE: f64 = 0.10;
/// An error comparison's tolerance when none is given: one percentage point.
const DEFAULT_ERRORS_TOLERANCE: f64 = 0.01;

/// The default `min_samples` of a criterion on the system's own metrics: points from
/// Prometheus, one each `step`, far fewer than requests.
pub const DEFAULT_PROM_MIN_SAMPLES: u64 = 3;

/// The default `min_samples` for a check on `check`'s metric.
fn default_min_samples(check: &crate::verdict::Check) -> u64 {
    match check.metric.base {
        crate::verdict::Base::Prom(..) => DEFAULT_PROM_MIN_SAMPLES,
        _ => DEFAULT_MIN_SAMPLES,
    }
}

/// The queries of the `metrics:` section, as criteria may name them.
#[derive(Clone, Copy)]
pub(super) enum Queries<'a> {
    /// No `metrics:` section.
    Absent,
    /// One with a mistake (reported there): any name passes here.
    Broken,
    Named(&'a [&'a str]),
}

/// Checks that a `prom.NAME` metric names a query of `metrics:`.
fn check_prom(ctx: &mut Ctx, at: &str, check: &crate::verdict::Check, queries: Queries) -> bool {
    let crate::verdict::Base::Prom(name, _) = check.metric.base else { return true };
    match queries {
        Queries::Absent => {
            ctx.error(
                at,
                format!("`{}` reads the system's own metrics, and no `metrics:` section says where", check.metric),
            )
            .hint = Some("add `metrics: { prometheus: http://127.0.0.1:9090, queries: { NAME: PROMQL } }`".into());
            false
        }
        Queries::Named(names) if !names.contains(&name) => {
            ctx.unknown(at, "query", name, names);
            false
        }
        Queries::Named(_) | Queries::Broken => true,
    }
}

pub(super) fn compile_criteria(
    ctx: &mut Ctx,
    root: &Map<String, Value>,
    stages: &[Stage],
    queries: Queries,
) -> Vec<Criterion> {
    let Some(raw) = root.get("criteria") else { return Vec::new() };
    let Some(list) = raw.as_array() else {
        ctx.error("criteria", "`criteria` is a list");
        return Vec::new();
    };
    let names = StageNames::of(stages);
    let mut out = Vec::new();
    for (i, value) in list.iter().enumerate() {
        let at = join_index("criteria", i);
        let m = match value {
            Value::String(s) => {
                match parse_check(s) {
                    Ok(check) if !check_prom(ctx, &at, &check, queries) => {}
                    Ok(check) => out.push(Criterion {
                        text: check.text.clone(),
                        min_samples: default_min_samples(&check),
                        rule: Rule::Check(check),
                        stages: None,
                        level: Level::Enforce,
                        abort_on_fail: false,
                    }),
                    Err(hint) => ctx.error(&at, format!("invalid check `{s}`")).hint = Some(hint),
                }
                continue;
            }
            Value::Object(_) => match ctx.read::<CriterionMapSpec>(&at, value) {
                Some(m) => {
                    let given = m.min_samples;
                    (m, given)
                }
                None => continue,
            },
            other => {
                ctx.error(&at, format!("a criterion is a string or a map, got {other}")).hint = Some(
                    "e.g. `- latency.p99 < 250ms` or `- { check: \"errors.rate < 1%\", stages: [candidate] }`".into(),
                );
                continue;
            }
        };
        if let Some(mut c) = compile_criterion(ctx, &at, m.0, &names) {
            if let Rule::Check(check) = &c.rule {
                if !check_prom(ctx, &join_key(&at, "check"), check, queries) {
                    continue;
                }
                if m.1.is_none() {
                    c.min_samples = default_min_samples(check);
                }
            }
            out.push(c);
        }
    }
    out
}

/// The stages a criterion may name: each stage, and each progressive exposure or matrix
/// by the name of the stage that holds it (standing for all its steps or cells).
pub(super) struct StageNames<'a> {
    stages: Vec<&'a str>,
    groups: Vec<(&'a str, Vec<&'a str>)>,
}

impl<'a> StageNames<'a> {
    pub(super) fn of(stages: &'a [Stage]) -> Self {
        let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
        for s in stages {
            let group = s.exposure.as_ref().map(|e| &e.group).or(s.cell.as_ref().map(|c| &c.group));
            if let Some(group) = group {
                match groups.iter_mut().find(|(g, _)| g == group) {
                    Some((_, steps)) => steps.push(&s.name),
                    None => groups.push((group, vec![&s.name])),
                }
            }
        }
        StageNames { stages: stages.iter().map(|s| s.name.as_str()).collect(), groups }
    }

    fn steps(&self, name: &str) -> Option<&[&'a str]> {
        self.groups.iter().find(|(g, _)| *g == name).map(|(_, s)| s.as_slice())
    }
}

pub(super) fn compile_criterion(ctx: &mut Ctx, at: &str, m: CriterionMapSpec, names: &StageNames) -> Option<Criterion> {
    let stages = names.stages.as_slice();
    let level = match m.level.as_deref() {
        None | Some("enforce") => Level::Enforce,
        Some("warn") => Level::Warn,
        Some("observe") => Level::Observe,
        Some(other) => {
            ctx.unknown(&join_key(at, "level"), "level", other, &["enforce", "warn", "observe"]);
            return None;
        }
    };
    let min_samples = m.min_samples.unwrap_or(DEFAULT_MIN_SAMPLES);
    let abort_on_fail = m.abort_on_fail.unwrap_or(false);
    let stage_ok = |ctx: &mut Ctx, path: &str, s: &str| {
        // The stage itself, or one of its steps or cells.
        if ctx.broken_stages.iter().any(|b| {
            s == b || s.strip_prefix(b.as_str()).is_some_and(|rest| rest.starts_with('@') || rest.starts_with('('))
        }) {
            // Its own mistake is reported where it is.
            return false;
        }
        let known = stages.contains(&s);
        if let (false, Some(steps)) = (known, names.steps(s)) {
            let listed = steps.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ");
            ctx.error(
                path,
                format!("`{s}` is a progressive exposure or a matrix; a comparison names one of its stages"),
            )
            .hint = Some(format!("its stages: {listed}"));
            return false;
        }
        if !known {
            ctx.unknown(path, "stage", s, stages);
            // A matrix cell's name holds commas: unquoted in a YAML list, it splits.
            if s.contains('(') != s.contains(')')
                && let Some(d) = ctx.errors.last_mut()
            {
                d.hint = Some(
                    "a matrix cell's name holds `, `: quote it in a list, e.g. `stages: [\"combos(a=1, b=2)\"]`".into(),
                );
            }
        }
        known
    };
    match (&m.check, &m.compare) {
        (Some(_), Some(_)) => {
            ctx.error(at, "a criterion is either a `check` or a `compare`, not both");
            None
        }
        (None, None) => {
            ctx.error(at, "a criterion map needs `check` or `compare`").hint =
                Some("e.g. `{ check: \"errors.rate < 5%\", stages: [outage] }`".into());
            None
        }
        (Some(text), None) => {
            for key in ["stage", "baseline", "max_regression", "confidence"] {
                let given = match key {
                    "stage" => m.stage.is_some(),
                    "baseline" => m.baseline.is_some(),
                    "max_regression" => m.max_regression.is_some(),
                    _ => m.confidence.is_some(),
                };
                if given {
                    ctx.error(&join_key(at, key), format!("`{key}` goes with `compare`, not `check`")).hint =
                        Some("use `stages: [...]` to pick the stages a check applies to".into());
                }
            }
            let mut ok = true;
            if let Some(list) = &m.stages {
                if list.is_empty() {
                    ctx.error(
                        &join_key(at, "stages"),
                        "an empty `stages` list judges nothing; leave it out to judge every stage",
                    );
                    ok = false;
                }
                for (j, s) in list.iter().enumerate() {
                    ok &= names.steps(s).is_some() || stage_ok(ctx, &join_index(&join_key(at, "stages"), j), s);
                }
            }
            // An exposure named stands for each of its steps.
            let listed = m.stages.map(|list| {
                list.into_iter()
                    .flat_map(|s| match names.steps(&s) {
                        Some(steps) => steps.iter().map(|x| x.to_string()).collect(),
                        None => vec![s],
                    })
                    .collect::<Vec<_>>()
            });
            match parse_check(text) {
                Ok(check) => ok.then(|| Criterion {
                    text: check.text.clone(),
                    rule: Rule::Check(check),
                    stages: listed,
                    level,
                    min_samples,
                    abort_on_fail,
                }),
                Err(hint) => {
                    ctx.error(&join_key(at, "check"), format!("invalid check `{text}`")).hint = Some(hint);
                    None
                }
            }
        }
        (None, Some(what)) => {
            let metric = match what.as_str() {
                "latency" => CompareMetric::Latency,
                "errors" | "errors.rate" => CompareMetric::Errors,
                other => {
                    ctx.unknown(&join_key(at, "compare"), "comparison metric", other, &["latency", "errors"]);
                    return None;
                }
            };
            if m.stages.is_some() {
                ctx.error(&join_key(at, "stages"), "a comparison names its stages with `stage` and `baseline`");
            }
            if abort_on_fail {
                ctx.error(
                    &join_key(at, "abort_on_fail"),
                    "a comparison is judged after both stages ran; it cannot abort a stage",
                );
            }
            let stage = m.stage.clone();
            let baseline = m.baseline.clone();
            if stage.is_none() {
                ctx.error(at, "a comparison needs `stage` (the stage under test)");
            }
            if baseline.is_none() {
                ctx.error(at, "a comparison needs `baseline` (the reference stage)");
            }
            let (stage, baseline) = (stage?, baseline?);
            let ok_s = stage_ok(ctx, &join_key(at, "stage"), &stage);
            let ok_b = stage_ok(ctx, &join_key(at, "baseline"), &baseline);
            if stage == baseline {
                ctx.error(&join_key(at, "baseline"), "a stage compared with itself proves nothing");
                return None;
            }
            let tolerance = match &m.max_regression {
                None if metric == CompareMetric::Latency => Some(Tolerance::Relative(DEFAULT_LATENCY_TOLERANCE)),
                None => Some(Tolerance::Relative(DEFAULT_ERRORS_TOLERANCE)),
                Some(text) => {
                    let key = join_key(at, "max_regression");
                    let t = text.0.trim();
                    if t.ends_with('%') || t.parse::<f64>().is_ok() {
                        ctx.unit(&key, Some(text), units::parse_fraction).map(Tolerance::Relative)
                    } else if metric == CompareMetric::Latency {
                        let d = ctx.unit(
                            &key,
                            Some(&Text(t.trim_start_matches('+').trim().to_string())),
                            units::parse_duration,
                        );
                        d.map(|d| Tolerance::AbsoluteMs(d.as_secs_f64() * 1000.0))
                    } else {
                        ctx.error(&key, format!("invalid value `{t}`")).hint =
                            Some("an error rate's tolerance is in points, e.g. `1%`".into());
                        None
                    }
                }
            };
            let confidence = match &m.confidence {
                None => Some(0.95),
                some => ctx.unit(&join_key(at, "confidence"), some.as_ref(), units::parse_fraction),
            };
            if let Some(c) = confidence
                && !(0.5..1.0).contains(&c)
            {
                ctx.error(
                    &join_key(at, "confidence"),
                    format!("a confidence must lie in [50%, 100%), got {:.1}%", c * 100.0),
                );
                return None;
            }
            let text = format!("compare {what}: {stage} vs {baseline}");
            (ok_s && ok_b).then_some(())?;
            Some(Criterion {
                rule: Rule::Compare(Compare {
                    metric,
                    stage,
                    baseline,
                    tolerance: tolerance?,
                    confidence: confidence?,
                }),
                stages: None,
                level,
                min_samples,
                abort_on_fail: false,
                text,
            })
        }
    }
}

pub(super) fn compile_on_verdict(ctx: &mut Ctx, o: OnVerdictSpec) -> OnVerdict {
    let check = |ctx: &mut Ctx, key: &str, cmd: Option<Vec<String>>| {
        let cmd = cmd?;
        if cmd.is_empty() || cmd[0].trim().is_empty() {
            ctx.error(
                &join_key("on_verdict", key),
                "a command is a program and its arguments, e.g. `[./scripts/notify.sh, done]`",
            );
            return None;
        }
        Some(cmd)
    };
    OnVerdict {
        promote: check(ctx, "promote", o.promote),
        rollback: check(ctx, "rollback", o.rollback),
        inconclusive: check(ctx, "inconclusive", o.inconclusive),
    }
}
