//! `/metrics` during a run (`stagegate run --metrics ADDR`): the rehearsal in the
//! Prometheus text format, so a team's dashboards show it beside the system's own.
//!
//! [`Live`] holds the families; the runner feeds it as it goes: every request (count by
//! outcome, latency histogram, by stage and flag variant), each stage's start and end
//! (which stage is running; its data-quality counts, flag exposure and stagegate's own
//! send lag once judged), and each fault as it starts and ends. Served by the run's own
//! loopback [`crate::server::Server`].

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    stage: String,
    /// The flag variant (`new-enricher=true`), empty when the stage splits no flag.
    variant: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VariantLabels {
    stage: String,
    variant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DataLabels {
    stage: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    stage: String,
    kind: String,
    at: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlagLabels {
    stage: String,
    flag: String,
    value: String,
}

/// Request latency buckets: 0.5 ms to about 16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The run's metrics, as `/metrics` serves them.
pub struct Live {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<VariantLabels, Histogram, fn() -> Histogram>,
    running: Family<StageLabels, Gauge>,
    data: Family<DataLabels, Gauge>,
    faults: Family<FaultLabels, Gauge>,
    flags: Family<FlagLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    send_lag: Family<StageLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

/// One variant's request metrics in a stage, kept by the driver's accounts so that a
/// request costs no label lookup.
#[derive(Clone)]
pub struct Handles {
    acked: Counter,
    rejected: Counter,
    failed: Counter,
    latency: Histogram,
}

impl Handles {
    /// Counts one request and, when it was answered, its latency.
    pub fn request(&self, outcome: crate::measure::Outcome, latency: Duration) {
        use crate::measure::Outcome;
        match outcome {
            Outcome::Acked => self.acked.inc(),
            Outcome::Rejected => self.rejected.inc(),
            Outcome::Failed => self.failed.inc(),
        };
        self.latency.observe(latency.as_secs_f64());
    }
}

impl Default for Live {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("stagegate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests sent by the workload, by stage, flag variant and outcome",
            requests.clone(),
        );
        let latency = Family::<VariantLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Request latency from the intended send time, by stage and flag variant",
            latency.clone(),
        );
        let running = Family::<StageLabels, Gauge>::default();
        registry.register("stage_running", "1 for the stage running now, 0 for the others", running.clone());
        let data = Family::<DataLabels, Gauge>::default();
        registry.register(
            "data_records",
            "A judged stage's data-quality counts (sent, acked, lost, duplicated, corrupted, accepted_invalid, rejected_valid)",
            data.clone(),
        );
        let faults = Family::<FaultLabels, Gauge>::default();
        registry.register("fault_active", "1 while a fault is active", faults.clone());
        let flags = Family::<FlagLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register("flag_share", "The share of records a stage gives each flag value", flags.clone());
        let send_lag = Family::<StageLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "send_lag_p99_seconds",
            "How late stagegate sent its requests (p99) in a finished stage: its own health",
            send_lag.clone(),
        );
        Live { registry, requests, latency, running, data, faults, flags, send_lag }
    }
}

impl Live {
    /// The handles of one variant (`None`: the stage splits no flag) in `stage`.
    pub fn handles(&self, stage: &str, variant: Option<&str>) -> Handles {
        let variant = variant.unwrap_or_default().to_string();
        let count = |outcome| {
            self.requests.get_or_create_owned(&RequestLabels { stage: stage.into(), variant: variant.clone(), outcome })
        };
        Handles {
            acked: count("acked"),
            rejected: count("rejected"),
            failed: count("failed"),
            latency: self.latency.get_or_create_owned(&VariantLabels { stage: stage.into(), variant: variant.clone() }),
        }
    }

    /// A stage starts with these flag states: it is the running one.
    pub fn stage_started(&self, stage: &crate::scenario::Stage, previous: Option<&str>) {
        if let Some(p) = previous {
            self.running.get_or_create(&StageLabels { stage: p.into() }).set(0);
        }
        self.running.get_or_create(&StageLabels { stage: stage.name.clone() }).set(1);
        for (flag, state) in &stage.flags {
            for value in state.values() {
                let value_text = value.as_str().map_or_else(|| value.to_string(), str::to_string);
                let labels = FlagLabels { stage: stage.name.clone(), flag: flag.clone(), value: value_text };
                self.flags.get_or_create(&labels).set(state.share_of(value));
            }
        }
    }

    /// A fault started (`true`) or ended.
    pub fn fault(&self, stage: &str, kind: &str, at: &str, active: bool) {
        let labels = FaultLabels { stage: stage.into(), kind: kind.into(), at: at.into() };
        self.faults.get_or_create(&labels).set(i64::from(active));
    }

    /// A stage was judged: its data counts and stagegate's send lag.
    pub fn stage_finished(&self, report: &crate::report::StageReport) {
        self.running.get_or_create(&StageLabels { stage: report.name.clone() }).set(0);
        let d = &report.metrics.data;
        let mut counts = vec![("sent", d.sent), ("acked", d.acked), ("rejected_valid", d.rejected_valid)];
        if !d.unobserved {
            counts.extend([
                ("lost", d.lost),
                ("duplicated", d.duplicated),
                ("corrupted", d.corrupted),
                ("accepted_invalid", d.accepted_invalid),
            ]);
        }
        for (kind, n) in counts {
            let labels = DataLabels { stage: report.name.clone(), kind };
            self.data.get_or_create(&labels).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        if let Some(lag) = &report.health.send_lag {
            self.send_lag.get_or_create(&StageLabels { stage: report.name.clone() }).set(lag.p99_ms / 1000.0);
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The `/metrics` endpoint over `live`.
pub fn router(live: Arc<Live>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let live = live.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    live.text(),
                )
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::Outcome;

    #[test]
    fn requests_and_latency_are_counted_by_stage_and_variant() {
        let live = Live::default();
        let h = live.handles("canary", Some("new-enricher=true"));
        h.request(Outcome::Acked, Duration::from_millis(3));
        h.request(Outcome::Failed, Duration::from_millis(700));
        live.handles("canary", None).request(Outcome::Rejected, Duration::from_millis(1));
        let text = live.text();
        assert!(
            text.contains(r#"stagegate_requests_total{stage="canary",variant="new-enricher=true",outcome="acked"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"stagegate_requests_total{stage="canary",variant="",outcome="rejected"} 1"#), "{text}");
        assert!(
            text.contains(r#"stagegate_request_duration_seconds_count{stage="canary",variant="new-enricher=true"} 2"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
