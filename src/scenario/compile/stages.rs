//! The `stages` section: each stage's name, flag states and faults, and a progressive
//! exposure expanded into one stage per step (`rollout@10%`).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use std::time::Duration;

use super::super::diag::nearest;
use super::super::spec::*;
use super::super::yaml::{join_index, join_key};
use super::super::{ExposureStep, MatrixCell, Stage, step_name, units};
use super::Ctx;
use super::faults;
use super::flags::flag_state;
use super::matrix;
use crate::deps::Dependency;
use crate::flags::{FlagSet, FlagState, FlagType, Provider};
use crate::sut::Target;
use crate::workload::Workload;

pub(super) fn compile_stages(
    ctx: &mut Ctx,
    root: &Map<String, Value>,
    flags: &Option<FlagSet>,
    deps: &[(String, Dependency)],
    target: &Option<Target>,
    workload: Option<&Workload>,
) -> Vec<Stage> {
    let Some(raw) = root.get("stages") else {
        ctx.error("", "missing required key `stages`");
        return Vec::new();
    };
    let Some(list) = raw.as_array() else {
        ctx.error("stages", "`stages` is a list of stages");
        return Vec::new();
    };
    if list.is_empty() {
        ctx.error("stages", "a scenario needs at least one stage");
    }
    // Each name given so far, and what gave it (for a clash's message).
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    // A `flags` section with a mistake of its own leaves no flags to widen or combine:
    // that mistake is reported, not a second one here.
    let flags_broken = flags.is_none() && root.contains_key("flags");
    let mut out = Vec::new();
    for (i, value) in list.iter().enumerate() {
        let at = join_index("stages", i);
        let Some(st) = ctx.read::<StageSpec>(&at, value) else { continue };
        if seen.insert(st.name.clone(), "the stage of that name".into()).is_some() {
            ctx.error(&join_key(&at, "name"), format!("stage `{}` is defined twice", st.name));
        }
        if st.name.chars().any(crate::report::hidden) {
            ctx.error(
                &join_key(&at, "name"),
                "a stage's name cannot hold control or direction characters (it is printed)",
            );
        }
        if st.name.trim().is_empty() {
            ctx.error(&join_key(&at, "name"), "a stage needs a name");
        }
        let mut states = BTreeMap::new();
        for (key, value) in &st.flags {
            let path = join_key(&join_key(&at, "flags"), key);
            let def = flags.as_ref().and_then(|f| f.definitions.iter().find(|d| &d.key == key));
            match def {
                Some(def) => {
                    if let Some(state) = flag_state(ctx, &path, def, value) {
                        let env = flags.as_ref().is_some_and(|f| f.provider == Provider::Env);
                        if env && matches!(state, FlagState::Split { .. }) {
                            ctx.error(
                                &path,
                                "the `env` provider gives the whole process one value per flag; it cannot split one",
                            )
                            .hint =
                                Some("use `provider: ofrep`, `flagd-file` or `header` for fractional exposure".into());
                        }
                        states.insert(key.clone(), state);
                    }
                }
                None if flags.is_none() => {}
                None => {
                    let known: Vec<&str> =
                        flags.iter().flat_map(|f| f.definitions.iter().map(|d| d.key.as_str())).collect();
                    ctx.unknown(&path, "flag", key, &known);
                    if nearest(key, known.iter().copied()).is_none()
                        && let Some(h) = super::super::schema::misplaced_hint(key)
                        && let Some(d) = ctx.errors.last_mut()
                    {
                        d.hint = Some(h);
                    }
                }
            }
        }
        if flags_broken && (st.exposure.is_some() || st.matrix.is_some()) {
            ctx.broken_stages.push(st.name.clone());
            continue;
        }
        if st.exposure.is_some() && st.matrix.is_some() {
            ctx.error(&join_key(&at, "matrix"), "a stage widens an exposure or expands a matrix, not both").hint =
                Some("put them in two stages".into());
            ctx.broken_stages.push(st.name.clone());
            continue;
        }
        let exposure = match &st.exposure {
            Some(e) => match compile_exposure(ctx, &join_key(&at, "exposure"), e, flags, &st.flags, workload) {
                Some(e) => Some(e),
                None => {
                    ctx.broken_stages.push(st.name.clone());
                    continue;
                }
            },
            None => None,
        };
        if exposure.is_some()
            && let Some((key, _)) = states.iter().find(|(_, s)| matches!(s, FlagState::Split { .. }))
        {
            ctx.error(
                &join_key(&join_key(&at, "flags"), key),
                format!("a stage with an exposure splits only the exposure's flag; `{key}` is split here too"),
            )
            .hint = Some("give it one value here, or split it in a stage of its own".into());
            ctx.broken_stages.push(st.name.clone());
            continue;
        }
        let duration = exposure.as_ref().map(|e| e.hold).or(workload.map(|w| w.duration));
        let mut stage_faults = Vec::new();
        for (j, f) in st.faults.iter().enumerate() {
            let path = join_index(&join_key(&at, "faults"), j);
            let Some(spec) = ctx.read::<FaultSpec>(&path, f) else { continue };
            if let Some(fault) = faults::compile(ctx, &path, &spec, deps, target, duration) {
                stage_faults.push(fault);
            }
        }
        if let Some(m) = &st.matrix {
            let at = join_key(&at, "matrix");
            let Some(matrix) = matrix::compile_matrix(ctx, &at, m, flags, &st.flags, deps, target, duration) else {
                ctx.broken_stages.push(st.name.clone());
                continue;
            };
            for (index, row) in matrix.rows.iter().enumerate() {
                let name = matrix.cell_name(&st.name, row);
                if let Some(other) = seen.insert(name.clone(), format!("another cell of matrix `{}`", st.name)) {
                    ctx.error(&at, format!("the matrix cell `{name}` clashes with {other}")).hint =
                        Some("a value holding `, ` or `=` can read like two: rename it".into());
                }
                let mut states = states.clone();
                let mut faults = stage_faults.clone();
                for (d, &v) in matrix.dims.iter().zip(row) {
                    match &d.values {
                        matrix::DimValues::Flag(values) => {
                            states.insert(d.name.clone(), FlagState::Fixed(values[v].clone()));
                        }
                        matrix::DimValues::Faults(sets) => faults.extend(sets[v].iter().cloned()),
                    }
                }
                out.push(Stage {
                    name,
                    flags: flags.as_ref().map(|f| f.state(&states)).unwrap_or_default(),
                    faults,
                    duration: duration.unwrap_or_default(),
                    exposure: None,
                    cell: Some(MatrixCell {
                        group: st.name.clone(),
                        mode: matrix.mode,
                        values: matrix
                            .dims
                            .iter()
                            .zip(row)
                            .map(|(d, &v)| (d.name.clone(), d.labels[v].clone()))
                            .collect(),
                        index,
                        cells: matrix.rows.len(),
                        product: matrix.product,
                    }),
                });
            }
            continue;
        }
        let duration = duration.unwrap_or_default();
        let Some(exposure) = exposure else {
            let flags_state = flags.as_ref().map(|f| f.state(&states)).unwrap_or_default();
            out.push(Stage {
                name: st.name,
                flags: flags_state,
                faults: stage_faults,
                duration,
                exposure: None,
                cell: None,
            });
            continue;
        };
        // One stage per step, named by its share.
        let steps = exposure.shares.len();
        for (index, &share) in exposure.shares.iter().enumerate() {
            let name = step_name(&st.name, share);
            if let Some(other) = seen.insert(name.clone(), format!("a step of exposure `{}`", st.name)) {
                ctx.error(&join_key(&at, "name"), format!("the exposure step `{name}` clashes with {other}"));
            }
            let state = if share >= 1.0 {
                FlagState::Fixed(exposure.value.clone())
            } else {
                FlagState::Split { variants: vec![(exposure.value.clone(), share)], rest: exposure.default.clone() }
            };
            let mut states = states.clone();
            states.insert(exposure.flag.clone(), state);
            let flags_state = flags.as_ref().map(|f| f.state(&states)).unwrap_or_default();
            out.push(Stage {
                name,
                flags: flags_state,
                faults: stage_faults.clone(),
                duration,
                exposure: Some(ExposureStep {
                    group: st.name.clone(),
                    flag: exposure.flag.clone(),
                    value: exposure.value.clone(),
                    share,
                    index,
                    steps,
                }),
                cell: None,
            });
        }
    }
    out
}

/// A checked `exposure:`.
struct Exposure {
    flag: String,
    value: Value,
    default: Value,
    shares: Vec<f64>,
    hold: Duration,
}

/// The most steps one exposure may have.
const MAX_STEPS: usize = 20;

fn compile_exposure(
    ctx: &mut Ctx,
    at: &str,
    e: &ExposureSpec,
    flags: &Option<FlagSet>,
    stage_flags: &BTreeMap<String, Value>,
    workload: Option<&Workload>,
) -> Option<Exposure> {
    let Some(set) = flags else {
        ctx.error(&join_key(at, "flag"), "an exposure widens a flag, but the scenario defines none (`flags:`)");
        return None;
    };
    let Some(def) = set.definitions.iter().find(|d| d.key == e.flag) else {
        let known: Vec<&str> = set.definitions.iter().map(|d| d.key.as_str()).collect();
        ctx.unknown(&join_key(at, "flag"), "flag", &e.flag, &known);
        return None;
    };
    let mut ok = true;
    if set.provider == Provider::Env {
        ctx.error(at, "the `env` provider gives the whole process one value per flag; it cannot widen an exposure")
            .hint = Some("use `provider: ofrep`, `flagd-file` or `header`".into());
        ok = false;
    }
    if stage_flags.contains_key(&e.flag) {
        ctx.error(
            &join_key(&join_key(at.trim_end_matches(".exposure"), "flags"), &e.flag),
            format!("flag `{}` is set by the stage's `exposure`, step by step; it cannot also be set here", e.flag),
        );
        ok = false;
    }
    if def.kind == FlagType::Object {
        ctx.error(&join_key(at, "flag"), format!("flag `{}` is an object flag; it cannot be split by share", def.key));
        return None;
    }
    let value = match &e.value {
        Some(v) if !def.kind.admits(v) => {
            ctx.error(&join_key(at, "value"), format!("{v} is not a value of flag `{}`", def.key));
            return None;
        }
        Some(v) if crate::flags::unprintable(v) => {
            ctx.error(&join_key(at, "value"), super::flags::UNPRINTABLE);
            return None;
        }
        Some(v) => v.clone(),
        None if def.kind == FlagType::Boolean => Value::Bool(!def.default.as_bool().unwrap_or(false)),
        None => {
            ctx.error(at, format!("say which value of flag `{}` the exposure widens (`value:`)", def.key)).hint =
                Some("only a boolean flag's exposed value goes without saying".into());
            return None;
        }
    };
    if value == def.default {
        ctx.error(
            &join_key(at, "value"),
            format!("{value} is flag `{}`'s default: widening it exposes nothing new", def.key),
        );
        ok = false;
    }
    let steps_at = join_key(at, "steps");
    if e.steps.is_empty() {
        ctx.error(&steps_at, "an exposure needs at least one step, e.g. `[1%, 10%, 50%, 100%]`");
        return None;
    }
    if e.steps.len() > MAX_STEPS {
        ctx.error(&steps_at, format!("{} steps; an exposure has at most {MAX_STEPS}", e.steps.len()));
        return None;
    }
    let mut shares = Vec::new();
    for (i, text) in e.steps.iter().enumerate() {
        let path = join_index(&steps_at, i);
        let Some(share) = ctx.unit(&path, Some(text), units::parse_fraction) else {
            ok = false;
            continue;
        };
        // Shares are basis points where flags are served (flagd's integer weights).
        let points = |s: f64| (s * crate::flags::TOTAL_WEIGHT as f64).round() as u64;
        if points(share) == 0 {
            ctx.error(&path, format!("a step of {} exposes nobody", units::format_share(share))).hint =
                Some("the smallest step is 0.01% (shares are served in basis points)".into());
            ok = false;
        } else if !crate::flags::whole_points(share) {
            ctx.error(&path, format!("`{}` is finer than shares are served", text.0)).hint = Some(format!(
                "shares are served in basis points: give at most two decimals of a percent ({})",
                units::format_share(points(share) as f64 / crate::flags::TOTAL_WEIGHT as f64)
            ));
            ok = false;
        } else if let Some(&last) = shares.last()
            && points(share) <= points(last)
        {
            ctx.error(
                &path,
                format!(
                    "steps widen the exposure: {} does not come after {}",
                    units::format_share(share),
                    units::format_share(last)
                ),
            )
            .hint = (share > last).then(|| "both are the same number of basis points, as shares are served".into());
            ok = false;
        }
        shares.push(share);
    }
    let hold = match &e.hold {
        None => workload.map(|w| w.duration),
        some => ctx.unit(&join_key(at, "hold"), some.as_ref(), units::parse_duration),
    };
    if let (Some(h), Some(w)) = (hold, workload)
        && h <= w.warmup
    {
        ctx.error(
            &join_key(at, "hold"),
            format!(
                "the warm-up ({}) leaves nothing to judge in a step of {}",
                units::format_duration(w.warmup),
                units::format_duration(h)
            ),
        );
        ok = false;
    }
    if let (Some(h), Some(w)) = (hold, workload)
        && let crate::workload::Arrival::Open(profile) = &w.arrival
        && profile.expected(h.as_secs_f64()) > crate::limits::MAX_REQUESTS_PER_STAGE
    {
        ctx.error(
            &join_key(at, "hold"),
            format!("this plans {:.0} requests per step", profile.expected(h.as_secs_f64())),
        )
        .hint = Some(format!(
            "stagegate keeps a ledger entry for every request; plan at most {:.0} per step",
            crate::limits::MAX_REQUESTS_PER_STAGE
        ));
        ok = false;
    }
    if let (Some(h), Some(w)) = (hold, workload)
        && h != w.duration
        && let crate::workload::Arrival::Open(profile) = &w.arrival
        && profile.points.len() > 1
    {
        ctx.warn(
            &join_key(at, "hold"),
            format_args!(
                "each step runs {} of the {} arrival shape laid out over `workload.duration` ({}): {}",
                units::format_duration(h),
                profile.shape,
                units::format_duration(w.duration),
                if h < w.duration { "the rest of it is not reached" } else { "its last rate holds to the step's end" }
            ),
        );
    }
    (ok && hold.is_some()).then(|| Exposure {
        flag: def.key.clone(),
        value,
        default: def.default.clone(),
        shares,
        hold: hold.unwrap_or_default(),
    })
}
