//! The `workload` section: the record schema, the arrival model (a rate, a ramp, a
//! spike, a daily cycle, a playbook file or a closed model), duration and warm-up.

use std::sync::Arc;
use std::time::Duration;

use super::super::spec::*;
use super::super::units;
use super::super::yaml::{self, join_index, join_key};
use super::{Ctx, base_dir};
use crate::data::Schema;
use crate::workload::{Arrival, RateProfile, Workload};

pub(super) fn compile_workload(ctx: &mut Ctx, w: &WorkloadSpec) -> Option<Workload> {
    let data_file = base_dir(ctx).join(&w.data);
    let schema = match Schema::load(&data_file) {
        Ok(s) => Some(Arc::new(s)),
        Err(super::Diagnostics(errors)) => {
            if let Some(unreadable) = errors.iter().find(|d| d.line == 0) {
                let why = unreadable.message.trim_start_matches("cannot read the data schema: ");
                let d = ctx.error(
                    "workload.data",
                    format!(
                        "cannot read the data schema `{}` (resolved to {}): {why}",
                        w.data,
                        crate::scenario::resolved(&data_file).display()
                    ),
                );
                if std::path::Path::new(&w.data).is_relative() {
                    d.hint = Some("the path is relative to the scenario file".into());
                }
            } else {
                ctx.errors.extend(errors);
            }
            None
        }
    };
    let duration = ctx.unit("workload.duration", Some(&w.duration), units::parse_duration);
    if duration.is_some_and(|d| d.is_zero()) {
        ctx.error("workload.duration", "a stage must last longer than zero");
    }
    let warmup = match &w.warmup {
        None => Some(Duration::ZERO),
        some => ctx.unit("workload.warmup", some.as_ref(), units::parse_duration),
    };
    let timeout = match &w.timeout {
        None => Some(Duration::from_secs(2)),
        some => ctx.unit("workload.timeout", some.as_ref(), units::parse_duration),
    };
    if timeout.is_some_and(|t| t > crate::limits::MAX_REQUEST_TIMEOUT) {
        ctx.error("workload.timeout", "a request timeout must be at most 10m").hint = Some(
            "a request still unanswered after that long has failed; stagegate waits for it at a stage's end".into(),
        );
    }
    if timeout.is_some_and(|t| t.is_zero()) {
        ctx.error("workload.timeout", "a request timeout must be above zero");
    }
    if let (Some(d), Some(wu)) = (duration, warmup)
        && wu >= d
        && !d.is_zero()
    {
        ctx.error(
            "workload.warmup",
            format!(
                "the warm-up ({}) leaves nothing to judge in a {} stage",
                units::format_duration(wu),
                units::format_duration(d)
            ),
        );
    }
    let arrival_spec = ctx.read::<ArrivalSpec>("workload.arrival", &w.arrival);
    // Check the arrival model even when the duration is wrong, against a long stage.
    let stage_for_checks = duration.filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs(24 * 3600));
    let arrival = arrival_spec.and_then(|a| compile_arrival(ctx, "workload.arrival", &a, stage_for_checks, 0));
    if let (Some(Arrival::Open(profile)), Some(d)) = (&arrival, duration) {
        let planned = profile.expected(d.as_secs_f64());
        if planned > crate::limits::MAX_REQUESTS_PER_STAGE {
            ctx.error("workload.arrival", format!("this plans {planned:.0} requests per stage")).hint = Some(format!(
                "stagegate keeps a ledger entry for every request; plan at most {:.0} per stage (a lower rate or a shorter stage)",
                crate::limits::MAX_REQUESTS_PER_STAGE
            ));
        }
    }
    if let (Some(schema), Some(arrival), Some(d)) = (&schema, &arrival, duration) {
        check_timestamps(ctx, &w.data, schema, arrival, d);
    }
    Some(Workload {
        schema: schema?,
        data_file,
        arrival: arrival?,
        duration: duration?,
        warmup: warmup?,
        timeout: timeout?,
    })
}

/// Timestamp fields must stay valid RFC 3339 (years up to 9999) for every record a
/// stage can send: the planned count with room for chance, or the per-stage bound for a
/// closed model.
fn check_timestamps(ctx: &mut Ctx, data: &str, schema: &Schema, arrival: &Arrival, stage: Duration) {
    let most = match arrival {
        Arrival::Open(p) => p.expected(stage.as_secs_f64()) * 2.0 + 1000.0,
        Arrival::Closed { .. } => crate::limits::MAX_REQUESTS_PER_STAGE,
    }
    .min(crate::limits::MAX_REQUESTS_PER_STAGE);
    for f in schema.timestamps_past_9999(most) {
        let crate::data::FieldKind::Timestamp { start, step_micros } = &f.kind else { continue };
        ctx.error(
            "workload.data",
            format!(
                "field `{}` of `{data}`: timestamps from {}, {} apart, pass the year 9999 within the ~{most:.0} records a stage can send",
                f.name,
                start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                units::format_duration(Duration::from_micros(*step_micros))
            ),
        )
        .hint = Some("a shorter `step` or an earlier `start` in the data schema".into());
    }
}

/// The daily shape: share of the peak for each hour of a day, midnight first.
const DAY: [f64; 24] = [
    0.10, 0.06, 0.04, 0.03, 0.03, 0.05, 0.15, 0.35, 0.55, 0.65, 0.70, 0.72, 0.75, 0.72, 0.70, 0.72, 0.78, 0.85, 0.95,
    1.00, 0.90, 0.70, 0.45, 0.25,
];

pub(super) fn compile_arrival(ctx: &mut Ctx, at: &str, a: &ArrivalSpec, stage: Duration, depth: u8) -> Option<Arrival> {
    let forms = [
        a.rate.is_some(),
        a.concurrency.is_some(),
        a.ramp.is_some(),
        a.spike.is_some(),
        a.daily.is_some(),
        a.playbook.is_some(),
    ];
    if forms.iter().filter(|x| **x).count() != 1 {
        ctx.error(
            at,
            "an arrival model needs exactly one of `rate`, `concurrency`, `ramp`, `spike`, `daily` or `playbook`",
        )
        .hint = Some("e.g. `arrival: { rate: 200/s }`".into());
        return None;
    }
    let rate = |ctx: &mut Ctx, path: &str, t: &Text| {
        ctx.unit(path, Some(t), units::parse_rate).and_then(|r| {
            if r > 0.0 || path.ends_with("min") || path.ends_with("base") || path.contains("ramp") {
                Some(r)
            } else {
                ctx.error(path, "the rate must be above zero");
                None
            }
        })
    };
    if let Some(r) = &a.rate {
        return rate(ctx, &join_key(at, "rate"), r).map(|r| Arrival::Open(RateProfile::constant(r)));
    }
    if let Some(n) = a.concurrency {
        if n == 0 || n > 10_000 {
            ctx.error(&join_key(at, "concurrency"), format!("concurrency must be between 1 and 10000, got {n}"));
            return None;
        }
        return Some(Arrival::Closed { concurrency: n });
    }
    if let Some(steps) = &a.ramp {
        if steps.is_empty() {
            ctx.error(&join_key(at, "ramp"), "a ramp needs at least one step");
            return None;
        }
        let mut points = Vec::new();
        let mut t = 0.0;
        let mut ok = true;
        for (i, raw) in steps.iter().enumerate() {
            let p = join_index(&join_key(at, "ramp"), i);
            let Some(s) = ctx.read::<RampStepSpec>(&p, raw) else {
                ok = false;
                continue;
            };
            let r = rate(ctx, &join_key(&p, "rate"), &s.rate);
            let len = ctx.unit(&join_key(&p, "for"), Some(&s.length), units::parse_duration);
            match (r, len) {
                (Some(r), Some(len)) => {
                    if i == 0 {
                        points.push((0.0, r));
                    }
                    t += len.as_secs_f64();
                    points.push((t, r));
                }
                _ => ok = false,
            }
        }
        if ok && points.iter().all(|(_, r)| *r <= 0.0) {
            ctx.error(&join_key(at, "ramp"), "a ramp must reach a rate above zero");
            ok = false;
        }
        return ok.then(|| Arrival::Open(RateProfile { points, shape: "ramp".into(), playbook: None }));
    }
    if let Some(s) = &a.spike {
        let p = join_key(at, "spike");
        let base = rate(ctx, &join_key(&p, "base"), &s.base);
        let peak = rate(ctx, &join_key(&p, "peak"), &s.peak);
        let start = ctx.unit(&join_key(&p, "at"), Some(&s.at), units::parse_duration);
        let len = ctx.unit(&join_key(&p, "for"), Some(&s.length), units::parse_duration);
        let (base, peak, start, len) = (base?, peak?, start?, len?);
        if start >= stage {
            ctx.error(
                &join_key(&p, "at"),
                format!(
                    "the spike starts at {} but the stage lasts {}",
                    units::format_duration(start),
                    units::format_duration(stage)
                ),
            );
            return None;
        }
        let (s0, s1) = (start.as_secs_f64(), (start + len).as_secs_f64());
        let points = vec![(0.0, base), (s0, base), (s0, peak), (s1, peak), (s1, base)];
        return Some(Arrival::Open(RateProfile { points, shape: "spike".into(), playbook: None }));
    }
    if let Some(d) = &a.daily {
        let p = join_key(at, "daily");
        let min = rate(ctx, &join_key(&p, "min"), &d.min);
        let max = rate(ctx, &join_key(&p, "max"), &d.max);
        let (min, max) = (min?, max?);
        if min > max {
            ctx.error(&join_key(&p, "min"), "`min` is above `max`");
            return None;
        }
        let hour = stage.as_secs_f64() / 24.0;
        let mut points: Vec<(f64, f64)> =
            DAY.iter().enumerate().map(|(h, m)| (h as f64 * hour, min + (max - min) * m)).collect();
        points.push((stage.as_secs_f64(), min + (max - min) * DAY[0]));
        return Some(Arrival::Open(RateProfile { points, shape: "daily".into(), playbook: None }));
    }
    if let Some(playbook) = &a.playbook {
        let p = join_key(at, "playbook");
        if depth > 0 {
            ctx.error(&p, "a playbook cannot name another playbook");
            return None;
        }
        let path = base_dir(ctx).join(playbook);
        let text = match crate::limits::read_bounded(&path, crate::limits::PLAYBOOK_BYTES) {
            Ok(t) => t,
            Err(e) => {
                let d = ctx.error(
                    &p,
                    format!(
                        "cannot read the playbook `{}` (resolved to {}): {e}",
                        playbook,
                        crate::scenario::resolved(&path).display()
                    ),
                );
                if std::path::Path::new(playbook).is_relative() {
                    d.hint = Some("the path is relative to the scenario file".into());
                }
                return None;
            }
        };
        let (spec, loc) = match yaml::parse::<PlaybookSpec>(&path, &text) {
            Ok(x) => x,
            Err(super::Diagnostics(errors)) => {
                ctx.errors.extend(errors);
                return None;
            }
        };
        let mut inner = Ctx {
            file: &path,
            loc: &loc,
            errors: Vec::new(),
            warnings: Vec::new(),
            overrides: &[],
            broken_stages: Vec::new(),
        };
        let arrival = compile_arrival(&mut inner, "arrival", &spec.arrival, stage, depth + 1);
        ctx.errors.extend(inner.errors);
        return arrival.map(|a| match a {
            Arrival::Open(mut profile) => {
                profile.playbook = Some(spec.name.clone());
                Arrival::Open(profile)
            }
            closed => closed,
        });
    }
    None
}

/// An arrival shape kept in a file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaybookSpec {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    arrival: ArrivalSpec,
}
