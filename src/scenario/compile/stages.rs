//! The `stages` section: each stage's name, flag states and faults.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::super::Stage;
use super::super::diag::nearest;
use super::super::spec::*;
use super::super::yaml::{join_index, join_key};
use super::Ctx;
use super::faults;
use super::flags::flag_state;
use crate::deps::Dependency;
use crate::flags::{FlagSet, FlagState, Provider};
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
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, value) in list.iter().enumerate() {
        let at = join_index("stages", i);
        let Some(st) = ctx.read::<StageSpec>(&at, value) else { continue };
        if !seen.insert(st.name.clone()) {
            ctx.error(&join_key(&at, "name"), format!("stage `{}` is defined twice", st.name));
        }
        if st.name.chars().any(char::is_control) {
            ctx.error(&join_key(&at, "name"), "a stage's name cannot hold control characters (it is printed)");
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
        let mut stage_faults = Vec::new();
        for (j, f) in st.faults.iter().enumerate() {
            let path = join_index(&join_key(&at, "faults"), j);
            let Some(spec) = ctx.read::<FaultSpec>(&path, f) else { continue };
            if let Some(fault) = faults::compile(ctx, &path, &spec, deps, target, workload.map(|w| w.duration)) {
                stage_faults.push(fault);
            }
        }
        let flags_state = flags.as_ref().map(|f| f.state(&states)).unwrap_or_default();
        out.push(Stage { name: st.name, flags: flags_state, faults: stage_faults });
    }
    out
}
