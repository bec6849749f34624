//! The fault catalog: every fault kind, where it may go, which parameters it takes, and
//! what carries it out. The one list of fault kinds; the scenario loader, the JSON
//! Schema, the reference documentation and the runner all read it.
//!
//! Not here: the typed [`super::FaultKind`] each entry compiles to, and the code that
//! applies it (the proxies, the timeline, the record faults).

/// What carries a fault out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// The TCP proxy, chunk by chunk of the byte stream.
    Stream,
    /// The HTTP proxy, request by request (and `latency` with a `match`, or at the target).
    Request,
    /// The process or container itself (signals, `docker pause`).
    Process,
    /// The records the workload sends.
    Record,
}

/// One fault kind.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// The name in scenario files.
    pub name: &'static str,
    /// Whether it may go at a dependency, at `target`, at `workload`.
    pub at_dependency: bool,
    pub at_target: bool,
    pub at_workload: bool,
    /// Parameters it needs, beyond the common ones (`from`, `for`, `every`,
    /// `probability`, `direction`).
    pub required: &'static [&'static str],
    /// Parameters it may take.
    pub optional: &'static [&'static str],
    pub layer: Layer,
    /// What it does, in one line (the format reference's table).
    pub effect: &'static str,
}

impl Kind {
    /// Whether `direction` applies (it does to what a proxy carries out).
    pub fn has_direction(&self) -> bool {
        matches!(self.layer, Layer::Stream | Layer::Request)
    }

    /// Whether it acts on a process or container stagegate starts (so it needs one).
    pub fn needs_started(&self) -> bool {
        self.layer == Layer::Process
    }
}

const fn kind(
    name: &'static str,
    (at_dependency, at_target, at_workload): (bool, bool, bool),
    required: &'static [&'static str],
    optional: &'static [&'static str],
    layer: Layer,
    effect: &'static str,
) -> Kind {
    Kind { name, at_dependency, at_target, at_workload, required, optional, layer, effect }
}

const DEP: (bool, bool, bool) = (true, false, false);
const DEP_OR_TARGET: (bool, bool, bool) = (true, true, false);
const WORKLOAD: (bool, bool, bool) = (false, false, true);

/// Every fault kind.
pub const KINDS: [Kind; 16] = [
    kind(
        "latency",
        DEP_OR_TARGET,
        &["delay"],
        &["jitter", "match"],
        Layer::Stream,
        "each chunk (or request) is held `delay ± jitter`",
    ),
    kind("bandwidth", DEP_OR_TARGET, &["rate"], &[], Layer::Stream, "throughput capped at `rate`"),
    kind("refuse", DEP, &[], &[], Layer::Stream, "new connections refused, open ones closed"),
    kind("blackhole", DEP, &[], &[], Layer::Stream, "connections accepted, nothing forwarded"),
    kind("reset", DEP, &[], &["after"], Layer::Stream, "connections reset (RST), after `after` bytes if given"),
    kind("slow_close", DEP, &["delay"], &[], Layer::Stream, "a close held back `delay`"),
    kind(
        "slicer",
        DEP,
        &["size"],
        &["size_variation", "delay"],
        Layer::Stream,
        "data cut into small pieces `delay` apart",
    ),
    kind("limit_data", DEP, &["bytes"], &[], Layer::Stream, "connection closed after `bytes` bytes"),
    kind("corrupt", DEP, &["rate"], &[], Layer::Stream, "random bits flipped in `rate` of the bytes"),
    kind(
        "http_error",
        DEP_OR_TARGET,
        &["status"],
        &["body", "match"],
        Layer::Request,
        "requests answered with `status` and `body`",
    ),
    kind(
        "kill",
        DEP_OR_TARGET,
        &[],
        &["signal", "restart_after"],
        Layer::Process,
        "the process or container killed, restarted after `restart_after`",
    ),
    kind("pause", DEP_OR_TARGET, &[], &[], Layer::Process, "the process or container frozen until the fault's end"),
    kind("malformed", WORKLOAD, &[], &[], Layer::Record, "records sent invalid"),
    kind("duplicate", WORKLOAD, &[], &[], Layer::Record, "records sent twice"),
    kind("out_of_order", WORKLOAD, &[], &["window"], Layer::Record, "records sent out of order within `window`"),
    kind("late", WORKLOAD, &["delay"], &[], Layer::Record, "records' event time set `delay` in the past"),
];

/// Every parameter some kind takes, beyond the common ones.
pub const PARAMETERS: [&str; 13] = [
    "delay",
    "jitter",
    "rate",
    "after",
    "size",
    "size_variation",
    "bytes",
    "status",
    "body",
    "signal",
    "restart_after",
    "window",
    "match",
];

/// The signals a `kill` fault may send.
pub const SIGNALS: [&str; 6] = ["SIGKILL", "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1"];

/// The kind named `name`.
pub fn find(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// Every kind's name.
pub fn names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_belongs_to_some_kind_and_every_kind_parameter_is_listed() {
        for p in PARAMETERS {
            assert!(
                KINDS.iter().any(|k| k.required.contains(&p) || k.optional.contains(&p)),
                "{p} is taken by no kind"
            );
        }
        for k in KINDS {
            for p in k.required.iter().chain(k.optional) {
                assert!(PARAMETERS.contains(p), "{} takes unlisted {p}", k.name);
            }
        }
    }
}
