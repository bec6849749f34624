//! The `flags` section (provider and definitions) and a stage's state of one flag (a
//! value, or a fractional exposure).

use serde_json::{Map, Value};

use super::super::diag::nearest;
use super::super::spec::*;
use super::super::units;
use super::super::yaml::join_key;
use super::{Ctx, top};
use crate::flags::{Category, FlagDef, FlagSet, FlagState, FlagType, Provider};
use crate::sut::Target;

/// Why a flag value with control or direction characters is refused.
pub(super) const UNPRINTABLE: &str =
    "a flag value cannot hold control or direction characters: it is printed in reports and sent in headers";

const FLAG_TYPES: [&str; 5] = ["boolean", "string", "integer", "number", "object"];
const CATEGORIES: [&str; 4] = ["release", "experiment", "operational", "permission"];
const PROVIDERS: [&str; 4] = ["ofrep", "flagd-file", "header", "env"];

pub(super) fn compile_flags(ctx: &mut Ctx, root: &Map<String, Value>, target: &Option<Target>) -> Option<FlagSet> {
    let Some(f) = top::<FlagsSpec>(ctx, root, "flags", false) else {
        return (!root.contains_key("flags")).then(FlagSet::default);
    };
    let mut ok = true;
    let provider = match f.provider.as_deref() {
        None | Some("ofrep") => Provider::Ofrep,
        Some("flagd-file") => Provider::FlagdFile(f.file.clone()),
        Some("header") => Provider::Header(f.header.clone().unwrap_or_else(|| "X-Stagegate-Flags".into())),
        Some("env") => Provider::Env,
        Some(other) => {
            ctx.unknown("flags.provider", "flag provider", other, &PROVIDERS);
            ok = false;
            Provider::Ofrep
        }
    };
    if f.file.is_some() && !matches!(provider, Provider::FlagdFile(_)) {
        ctx.error("flags.file", "`file` goes with `provider: flagd-file`");
        ok = false;
    }
    if f.header.is_some() && !matches!(provider, Provider::Header(_)) {
        ctx.error("flags.header", "`header` goes with `provider: header`");
        ok = false;
    }
    match (target, &provider) {
        (Some(Target::Builtin(..)), p) if *p != Provider::Ofrep => {
            ctx.error("flags.provider", format!("the builtin target reads its flags over OFREP, not `{}`", p.name()))
                .hint = Some("use `provider: ofrep` (the default)".into());
            ok = false;
        }
        (Some(Target::Http(h)), Provider::Env) if h.process.is_none() => {
            ctx.error("flags.provider", "the `env` provider needs a target stagegate starts (`target.process`)");
            ok = false;
        }
        _ => {}
    }
    let mut definitions = Vec::new();
    for (key, value) in &f.definitions {
        let at = join_key("flags.definitions", key);
        let Some(d) = ctx.read::<FlagDefSpec>(&at, value) else {
            ok = false;
            continue;
        };
        let kind = match d.kind.as_str() {
            "boolean" => FlagType::Boolean,
            "string" => FlagType::String,
            "integer" => FlagType::Integer,
            "number" => FlagType::Number,
            "object" => FlagType::Object,
            other => {
                ctx.unknown(&join_key(&at, "type"), "flag type", other, &FLAG_TYPES);
                ok = false;
                continue;
            }
        };
        if !kind.admits(&d.default) {
            ctx.error(&join_key(&at, "default"), format!("the default {} is not a {}", d.default, d.kind));
            ok = false;
        } else if crate::flags::unprintable(&d.default) {
            ctx.error(&join_key(&at, "default"), UNPRINTABLE);
            ok = false;
        }
        let category = match d.category.as_deref() {
            None => None,
            Some("operational") => Some(Category::Operational),
            Some("experiment") => Some(Category::Experiment),
            Some("experimental") => {
                ctx.warn(&join_key(&at, "category"), "`experimental` is now called `experiment`; write that");
                Some(Category::Experiment)
            }
            Some("release") => Some(Category::Release),
            Some("permission") => Some(Category::Permission),
            Some(other) => {
                ctx.unknown(&join_key(&at, "category"), "category", other, &CATEGORIES);
                ok = false;
                None
            }
        };
        let expires = match &d.expires {
            None => None,
            Some(t) => match chrono::NaiveDate::parse_from_str(&t.0, "%Y-%m-%d") {
                Ok(date) => Some(date),
                Err(_) => {
                    ctx.error(&join_key(&at, "expires"), format!("invalid date `{}`", t.0)).hint =
                        Some("expected a date like `2027-03-01`".into());
                    ok = false;
                    None
                }
            },
        };
        definitions.push(FlagDef {
            key: key.clone(),
            kind,
            default: d.default,
            category,
            category_as_written: d.category.clone(),
            owner: d.owner,
            expires,
        });
    }
    ok.then_some(FlagSet { provider, definitions })
}

/// Reads a stage's value for a flag: a plain value, or `{ VALUE: SHARE, ... }`.
pub(super) fn flag_state(ctx: &mut Ctx, path: &str, def: &FlagDef, value: &Value) -> Option<FlagState> {
    if def.kind.admits(value) {
        if crate::flags::unprintable(value) {
            ctx.error(path, UNPRINTABLE);
            return None;
        }
        return Some(FlagState::Fixed(value.clone()));
    }
    let Value::Object(split) = value else {
        ctx.error(path, format!("flag `{}` is {}, got {value}", def.key, type_name(def.kind)));
        return None;
    };
    if def.kind == FlagType::Object {
        ctx.error(path, "fractional exposure is not available for object flags");
        return None;
    }
    let mut variants = Vec::new();
    let mut total = 0.0;
    for (text, share) in split {
        let p = join_key(path, text);
        let variant = match def.kind {
            FlagType::Boolean => text.parse::<bool>().ok().map(Value::Bool),
            FlagType::String => Some(Value::String(text.clone())),
            FlagType::Integer => text.parse::<i64>().ok().map(Value::from),
            FlagType::Number => text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number),
            FlagType::Object => None,
        };
        if variant.as_ref().is_some_and(crate::flags::unprintable) {
            ctx.error(&p, UNPRINTABLE);
            return None;
        }
        let Some(variant) = variant else {
            let hint = match def.kind {
                FlagType::Boolean => nearest(text, ["true", "false"]).map(|b| format!("did you mean `{b}`?")),
                _ => None,
            };
            let hint = hint.or_else(|| {
                text.ends_with('%').then(|| {
                    "a share with a decimal comma (`0,5%`) reads as two keys in YAML; write `0.5%`".to_string()
                })
            });
            ctx.error(&p, format!("`{text}` is not a {} value of flag `{}`", type_name(def.kind), def.key)).hint = hint;
            return None;
        };
        let share_text = match share {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => other.to_string(),
        };
        match units::parse_fraction(&share_text) {
            Ok(f) if !crate::flags::whole_points(f) => {
                let points = (f * crate::flags::TOTAL_WEIGHT as f64).round() / crate::flags::TOTAL_WEIGHT as f64;
                ctx.error(&p, format!("`{share_text}` is finer than shares are served")).hint = Some(format!(
                    "shares are served in basis points: give at most two decimals of a percent ({})",
                    units::format_share(points)
                ));
                return None;
            }
            Ok(f) => {
                total += f;
                variants.push((variant, f));
            }
            Err(hint) => {
                ctx.error(&p, format!("invalid share `{share_text}`")).hint = Some(hint);
                return None;
            }
        }
    }
    if total > 1.0 + 1e-9 {
        ctx.error(path, format!("the shares add up to {:.1}%, above 100%", total * 100.0));
        return None;
    }
    if variants.iter().all(|(v, share)| *v == def.default || *share == 0.0) {
        ctx.warn(path, format_args!("every share goes to the default value {}; the stage is not split", def.default));
    }
    Some(FlagState::Split { variants, rest: def.default.clone() })
}

fn type_name(t: FlagType) -> &'static str {
    match t {
        FlagType::Boolean => "boolean",
        FlagType::String => "string",
        FlagType::Integer => "integer",
        FlagType::Number => "number",
        FlagType::Object => "object",
    }
}
