//! Checking one fault of a stage against the fault catalog (`fault::catalog`): its
//! kind, where it may be placed, which parameters it takes and which it needs, and its
//! schedule inside the stage.

use std::time::Duration;

use super::super::spec::FaultSpec;
use super::super::units;
use super::super::yaml::join_key;
use super::Ctx;
use crate::deps::{Dependency, Provision};
use crate::fault::{Direction, Fault, FaultKind, HttpMatch, Place, Schedule, catalog};
use crate::sut::Target;

/// Parses a byte rate: `64KB/s`, `1MB/s`, `512B/s`, `2MiB/s`.
pub fn parse_byte_rate(text: &str) -> Result<u64, String> {
    let hint = || format!("expected a byte rate like `64KB/s` or `1MB/s`, got `{}`", text.trim());
    let (amount, per) = text.trim().split_once('/').ok_or_else(hint)?;
    if per.trim() != "s" {
        return Err(hint());
    }
    let amount = amount.trim();
    let split = amount.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(hint)?;
    let (number, unit) = amount.split_at(split);
    let number: f64 = number.trim().parse().map_err(|_| hint())?;
    let factor = match unit {
        "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        _ => return Err(hint()),
    };
    let bytes = number * factor;
    if !(bytes >= 1.0 && bytes.is_finite()) {
        return Err(format!("a byte rate must be at least 1B/s, got `{}`", text.trim()));
    }
    Ok(bytes as u64)
}

/// Checks one fault; `stage` is the stage length when the workload is valid.
pub(super) fn compile(
    ctx: &mut Ctx,
    path: &str,
    f: &FaultSpec,
    deps: &[(String, Dependency)],
    target: &Option<Target>,
    stage: Option<Duration>,
) -> Option<Fault> {
    let Some(info) = catalog::find(&f.kind) else {
        ctx.unknown(&join_key(path, "kind"), "fault kind", &f.kind, &catalog::names());
        return None;
    };
    let (kind_name, on_dep, on_target, on_workload) = (info.name, info.at_dependency, info.at_target, info.at_workload);
    let mut ok = true;
    // Where.
    let dep = deps.iter().find(|(n, _)| *n == f.at).map(|(_, d)| d);
    let place = match f.at.as_str() {
        "target" => Place::Target,
        "workload" => Place::Workload,
        name => Place::Dependency(name.to_string()),
    };
    let place_ok = match &place {
        Place::Dependency(name) if dep.is_none() => {
            let mut valid: Vec<&str> = deps.iter().map(|(n, _)| n.as_str()).collect();
            valid.extend(["target", "workload"]);
            ctx.unknown(&join_key(path, "at"), "dependency", name, &valid);
            false
        }
        Place::Dependency(_) => on_dep,
        Place::Target => on_target,
        Place::Workload => on_workload,
    };
    if !place_ok && (dep.is_some() || !matches!(place, Place::Dependency(_))) {
        let allowed: Vec<&str> = [(on_dep, "a dependency"), (on_target, "`target`"), (on_workload, "`workload`")]
            .iter()
            .filter(|(a, _)| *a)
            .map(|(_, w)| *w)
            .collect();
        ctx.error(&join_key(path, "at"), format!("a {kind_name} fault cannot go at `{}`", f.at)).hint =
            Some(format!("it goes at {}", allowed.join(" or ")));
        ok = false;
    }
    if place_ok && info.needs_started() {
        let startable = match (&place, dep) {
            (Place::Dependency(_), Some(d)) => matches!(d.provision, Provision::Process(_) | Provision::Container(_)),
            (Place::Target, _) => matches!(target, Some(Target::Http(h)) if h.process.is_some()),
            _ => false,
        };
        if !startable {
            ctx.error(
                &join_key(path, "at"),
                format!("a {kind_name} fault needs a process or container that stagegate starts"),
            );
            ok = false;
        }
    }
    // Which parameters.
    let (required, optional) = (info.required, info.optional);
    let given: [(&str, bool); 13] = [
        ("delay", f.delay.is_some()),
        ("jitter", f.jitter.is_some()),
        ("rate", f.rate.is_some()),
        ("after", f.after.is_some()),
        ("size", f.size.is_some()),
        ("size_variation", f.size_variation.is_some()),
        ("bytes", f.bytes.is_some()),
        ("status", f.status.is_some()),
        ("body", f.body.is_some()),
        ("signal", f.signal.is_some()),
        ("restart_after", f.restart_after.is_some()),
        ("window", f.window.is_some()),
        ("match", f.predicate.is_some()),
    ];
    for (name, present) in given {
        if present && !required.contains(&name) && !optional.contains(&name) {
            let takes: Vec<String> = required.iter().chain(optional).map(|p| format!("`{p}`")).collect();
            let hint = if takes.is_empty() {
                format!("a {kind_name} fault takes no parameters beyond `from`, `for`, `every`, `probability`")
            } else {
                format!("a {kind_name} fault takes {}", takes.join(", "))
            };
            ctx.error(&join_key(path, name), format!("`{name}` does not apply to a {kind_name} fault")).hint =
                Some(hint);
            ok = false;
        }
        if !present && required.contains(&name) {
            ctx.error(path, format!("a {kind_name} fault needs `{name}`"));
            ok = false;
        }
    }
    if f.direction.is_some() && !info.has_direction() {
        ctx.error(&join_key(path, "direction"), format!("`direction` does not apply to a {kind_name} fault"));
        ok = false;
    }
    // The values.
    let p = |name: &str| join_key(path, name);
    let delay = ctx.unit(&p("delay"), f.delay.as_ref(), units::parse_duration);
    let kind = match kind_name {
        "latency" => {
            let jitter = ctx.unit(&p("jitter"), f.jitter.as_ref(), units::parse_duration).unwrap_or_default();
            if let Some(d) = delay
                && jitter > d
            {
                ctx.error(&p("jitter"), "the jitter is larger than the delay").hint =
                    Some("a chunk cannot be held less than 0ms".into());
                ok = false;
            }
            delay.map(|delay| FaultKind::Latency { delay, jitter })
        }
        "bandwidth" => ctx
            .unit(&p("rate"), f.rate.as_ref(), parse_byte_rate)
            .map(|bytes_per_sec| FaultKind::Bandwidth { bytes_per_sec }),
        "refuse" => Some(FaultKind::Refuse),
        "blackhole" => Some(FaultKind::Blackhole),
        "reset" => Some(FaultKind::Reset { after: f.after }),
        "slow_close" => delay.map(|delay| FaultKind::SlowClose { delay }),
        "slicer" => {
            let size = f.size.unwrap_or(0);
            if f.size.is_some() && size == 0 {
                ctx.error(&p("size"), "a slice must be at least 1 byte");
                ok = false;
            }
            let variation = f.size_variation.unwrap_or(0);
            if variation >= size.max(1) {
                ctx.error(&p("size_variation"), "the variation must be smaller than the size");
                ok = false;
            }
            f.size.map(|size| FaultKind::Slicer { size, size_variation: variation, delay: delay.unwrap_or_default() })
        }
        "limit_data" => f.bytes.map(|bytes| FaultKind::LimitData { bytes }),
        "corrupt" => {
            ctx.unit(&p("rate"), f.rate.as_ref(), units::parse_fraction).map(|rate| FaultKind::Corrupt { rate })
        }
        "http_error" => {
            let status = f.status.unwrap_or(0);
            if f.status.is_some() && !(100..=599).contains(&status) {
                ctx.error(&p("status"), format!("`{status}` is not an HTTP status"));
                ok = false;
            }
            f.status.map(|status| FaultKind::HttpError { status, body: f.body.clone().unwrap_or_default() })
        }
        "kill" => {
            let signal = f.signal.clone().unwrap_or_else(|| "SIGKILL".into()).to_ascii_uppercase();
            let signal = if signal.starts_with("SIG") { signal } else { format!("SIG{signal}") };
            if !catalog::SIGNALS.contains(&signal.as_str()) {
                ctx.unknown(&p("signal"), "signal", &signal, &catalog::SIGNALS);
                ok = false;
            }
            let restart_after = ctx.unit(&p("restart_after"), f.restart_after.as_ref(), units::parse_duration);
            if f.restart_after.is_some() && restart_after.is_none() {
                ok = false;
            }
            Some(FaultKind::Kill { signal, restart_after })
        }
        "pause" => Some(FaultKind::Pause),
        "malformed" => Some(FaultKind::Malformed),
        "duplicate" => Some(FaultKind::Duplicate),
        "out_of_order" => {
            let window = f.window.unwrap_or(10);
            if window < 2 {
                ctx.error(&p("window"), "a window below 2 records cannot reorder anything");
                ok = false;
            }
            if window > crate::limits::MAX_REORDER_WINDOW {
                ctx.error(&p("window"), format!("a window of {window} records is more than stagegate holds back"))
                    .hint = Some(format!(
                    "at most {} records are held back to be sent out of order",
                    crate::limits::MAX_REORDER_WINDOW
                ));
                ok = false;
            }
            Some(FaultKind::OutOfOrder { window })
        }
        "late" => delay.map(|delay| FaultKind::Late { delay }),
        _ => None,
    };
    let predicate = f.predicate.as_ref().map(|m| {
        if m.path_prefix.as_deref().is_some_and(|p| !p.starts_with('/')) {
            ctx.error(&p("match.path_prefix"), "a path prefix starts with `/`");
            ok = false;
        }
        if m.first == Some(0) {
            ctx.error(&p("match.first"), "`first: 0` matches no request");
            ok = false;
        }
        HttpMatch {
            method: m.method.as_ref().map(|x| x.to_ascii_uppercase()),
            path_prefix: m.path_prefix.clone(),
            first: m.first,
        }
    });
    // When.
    let from = ctx.unit(&p("from"), f.from.as_ref(), units::parse_duration).unwrap_or_default();
    let length = ctx.unit(&p("for"), f.length.as_ref(), units::parse_duration);
    let every = ctx.unit(&p("every"), f.every.as_ref(), units::parse_duration);
    if let Some(stage) = stage
        && from >= stage
    {
        ctx.error(
            &p("from"),
            format!("starts at {} but the stage lasts {}", units::format_duration(from), units::format_duration(stage)),
        );
        ok = false;
    }
    if let (Some(stage), Some(len)) = (stage, length)
        && from < stage
        && from + len > stage
        && f.every.is_none()
    {
        ctx.warn(
            &p("for"),
            format_args!(
                "the fault would last to {} but the stage ends at {}: it is lifted there",
                units::format_duration(from + len),
                units::format_duration(stage)
            ),
        );
    }
    if let (Some(FaultKind::Kill { restart_after: Some(after), .. }), Some(len)) = (&kind, length)
        && *after >= len
    {
        ctx.warn(
            &p("for"),
            format_args!(
                "the kill's window ({}) ends before its restart ({} after the kill): the rest of the outage counts in the `after` phase; give `for` at least `restart_after` plus the time to get ready",
                units::format_duration(len),
                units::format_duration(*after)
            ),
        );
    }
    if length.is_some_and(|l| l.is_zero()) {
        ctx.error(&p("for"), "a fault must last longer than zero");
        ok = false;
    }
    if let Some(period) = every {
        match length {
            Some(len) if len < period => {}
            _ => {
                ctx.error(&p("every"), "a repeating fault needs a `for` shorter than its `every`");
                ok = false;
            }
        }
    }
    let probability = ctx.unit(&p("probability"), f.probability.as_ref(), units::parse_fraction);
    if f.probability.is_some() && probability.is_none() {
        ok = false;
    }
    if probability == Some(0.0) {
        ctx.warn(&p("probability"), "a probability of 0% never applies the fault");
    }
    let direction = match f.direction.as_deref() {
        None | Some("both") => Direction::Both,
        Some("upstream") => Direction::Upstream,
        Some("downstream") => Direction::Downstream,
        Some(other) => {
            ctx.unknown(&p("direction"), "direction", other, &["upstream", "downstream", "both"]);
            ok = false;
            Direction::Both
        }
    };
    let kind = kind?;
    ok.then(|| Fault {
        kind,
        at: place,
        schedule: Schedule { from, length, every },
        probability: probability.unwrap_or(1.0),
        direction,
        predicate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_rates() {
        assert_eq!(parse_byte_rate("64KB/s").unwrap(), 64_000);
        assert_eq!(parse_byte_rate("1MiB/s").unwrap(), 1_048_576);
        assert_eq!(parse_byte_rate("512B/s").unwrap(), 512);
        assert!(parse_byte_rate("64KB").is_err());
        assert!(parse_byte_rate("64kb/s").is_err());
        assert!(parse_byte_rate("0B/s").is_err());
    }
}
