//! The text form of a check, `METRIC OP VALUE`, and the metrics it can name.
//!
//! [`parse_check`] turns `latency.p99 < 250ms` into a [`Check`] whose limit is in the
//! metric's own unit (milliseconds for latency, a fraction for rates, a count for
//! counts). Errors are plain strings: the scenario loader adds file, line and path.

use serde::Serialize;

use crate::measure::{Phase, SliceMetrics, StageMetrics};
use crate::scenario::units;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub enum Op {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    /// Whether `measured OP limit` holds.
    pub fn holds(self, measured: f64, limit: f64) -> bool {
        match self {
            Op::Lt => measured < limit,
            Op::Le => measured <= limit,
            Op::Gt => measured > limit,
            Op::Ge => measured >= limit,
            Op::Eq => (measured - limit).abs() < 1e-9,
            Op::Ne => (measured - limit).abs() >= 1e-9,
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        })
    }
}

/// A metric a criterion can name: a base metric, optionally of one fault phase
/// (`during.latency.p99`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Metric {
    pub phase: Option<Phase>,
    pub base: Base,
}

/// A metric without its phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Latency(Quantile),
    ErrorsRate,
    ErrorsCount,
    Throughput,
    Data(DataField),
    DataRate(DataField),
    /// Acknowledgement to first visible in the output (needs a sink observer).
    Freshness(Quantile),
    /// Time from the last fault's end until back in band.
    RecoveryTime,
    /// Distinct personal-data values found in flag evaluation contexts.
    FlagsPiiExposed,
    /// A query of the scenario's `metrics:` section, summarised over the window.
    Prom(&'static str, PromAgg),
}

/// How a query's points over a window are summarised (`prom.NAME.max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromAgg {
    Mean,
    Max,
    Min,
    Last,
}

const PROM_AGGS: [(&str, PromAgg); 4] =
    [("mean", PromAgg::Mean), ("max", PromAgg::Max), ("min", PromAgg::Min), ("last", PromAgg::Last)];

/// A query name held for the program's life: the names of one scenario's queries,
/// kept once each however often scenarios are loaded.
fn intern(name: &str) -> &'static str {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.iter().find(|n| **n == name) {
        return n;
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.push(leaked);
    leaked
}

/// Whether `name` can name a query (`queue_depth`): a letter or `_`, then letters,
/// digits and `_`, at most 64.
pub fn is_query_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A latency statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantile {
    P50,
    P90,
    P95,
    P99,
    P999,
    Max,
    Mean,
}

/// A data-quality count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataField {
    Sent,
    Acked,
    Lost,
    Duplicated,
    Corrupted,
    AcceptedInvalid,
    RejectedValid,
    PiiExposed,
}

impl DataField {
    /// Whether the count is taken among the records the system acknowledged (a record
    /// it never accepted cannot be lost, doubled or altered by it).
    pub fn of_acknowledged(self) -> bool {
        matches!(self, DataField::Lost | DataField::Duplicated | DataField::Corrupted)
    }
}

const QUANTILES: [(&str, Quantile); 7] = [
    ("p50", Quantile::P50),
    ("p90", Quantile::P90),
    ("p95", Quantile::P95),
    ("p99", Quantile::P99),
    ("p999", Quantile::P999),
    ("max", Quantile::Max),
    ("mean", Quantile::Mean),
];

const DATA_FIELDS: [(&str, DataField); 8] = [
    ("sent", DataField::Sent),
    ("acked", DataField::Acked),
    ("lost", DataField::Lost),
    ("duplicated", DataField::Duplicated),
    ("corrupted", DataField::Corrupted),
    ("accepted_invalid", DataField::AcceptedInvalid),
    ("rejected_valid", DataField::RejectedValid),
    ("pii_exposed", DataField::PiiExposed),
];

const FRESHNESS: [(&str, Quantile); 3] = [("p50", Quantile::P50), ("p99", Quantile::P99), ("max", Quantile::Max)];

impl Metric {
    /// A whole-stage metric.
    pub fn whole(base: Base) -> Metric {
        Metric { phase: None, base }
    }

    /// Every metric name a check may use (without phase prefixes), for error hints.
    pub fn names() -> Vec<String> {
        let mut out: Vec<String> = QUANTILES.iter().map(|(n, _)| format!("latency.{n}")).collect();
        out.extend(["errors.rate", "errors.count", "throughput"].map(String::from));
        for (n, _) in DATA_FIELDS {
            out.push(format!("data.{n}"));
            if !matches!(n, "sent" | "acked") {
                out.push(format!("data.{n}_rate"));
            }
        }
        out.extend(FRESHNESS.iter().map(|(n, _)| format!("freshness.{n}")));
        out.push("recovery.time".into());
        out.push("flags.pii_exposed".into());
        out
    }

    /// Parses a metric name such as `latency.p99`, `data.lost_rate` or
    /// `during.errors.rate`.
    pub fn parse(name: &str) -> Option<Metric> {
        let (phase, rest) = match name.split_once('.') {
            Some((p, rest)) => match Phase::ALL.iter().find(|x| x.name() == p) {
                Some(phase) => (Some(*phase), rest),
                None => (None, name),
            },
            None => (None, name),
        };
        let base = Base::parse(rest)?;
        if phase.is_some() && matches!(base, Base::RecoveryTime | Base::Freshness(_) | Base::FlagsPiiExposed) {
            return None;
        }
        Some(Metric { phase, base })
    }

    /// The measured value, in the metric's unit; `None` when nothing was measured.
    pub fn value(self, m: &StageMetrics) -> Option<f64> {
        match self.base {
            Base::Prom(name, agg) => {
                let f = m.prom.get(name)?;
                let slice = match self.phase {
                    None => &f.whole,
                    Some(p) => f.phases.get(p.name())?,
                };
                return match agg {
                    PromAgg::Mean => slice.mean,
                    PromAgg::Max => slice.max,
                    PromAgg::Min => slice.min,
                    PromAgg::Last => slice.last,
                };
            }
            Base::RecoveryTime => return m.recovery.as_ref()?.seconds.map(|s| s * 1000.0),
            Base::FlagsPiiExposed => return m.flags_pii_exposed.map(|n| n as f64),
            Base::Freshness(q) => {
                let f = m.freshness.as_ref()?;
                return match q {
                    Quantile::P50 => f.p50,
                    Quantile::P99 => f.p99,
                    _ => f.max,
                };
            }
            _ => {}
        }
        let slice = match self.phase {
            None => m.whole(),
            Some(p) => m.phases.get(p.name())?.clone(),
        };
        self.base.value(&slice)
    }

    /// How many samples stand behind the value, for `min_samples`.
    pub fn samples(self, m: &StageMetrics) -> u64 {
        if let Base::Prom(name, _) = self.base {
            let Some(f) = m.prom.get(name) else { return 0 };
            return match self.phase {
                None => f.whole.samples,
                Some(p) => f.phases.get(p.name()).map_or(0, |s| s.samples),
            };
        }
        let slice = match self.phase {
            None => m.whole(),
            Some(p) => m.phases.get(p.name()).cloned().unwrap_or_default(),
        };
        match self.base {
            // Lost, duplicated and corrupted are counted among the records the system
            // acknowledged: with none acknowledged they are 0 and say nothing.
            Base::Data(f) | Base::DataRate(f) if f.of_acknowledged() => slice.data.acked,
            Base::Data(_) | Base::DataRate(_) => slice.data.sent,
            Base::Freshness(_) => m.freshness.as_ref().map_or(0, |f| f.records),
            _ => slice.requests,
        }
    }

    /// What one of [`Metric::samples`] is, for a person.
    pub fn sample_noun(self) -> &'static str {
        match self.base {
            Base::Data(f) | Base::DataRate(f) if f.of_acknowledged() => "acknowledged records",
            Base::Data(_) | Base::DataRate(_) => "records sent",
            Base::Freshness(_) => "records timed",
            Base::Prom(..) => "points from Prometheus",
            _ => "samples",
        }
    }

    /// Whether a failed value can only get worse as a stage goes on (a count, a
    /// maximum): such a failure mid-stage is final.
    pub fn monotone(self) -> bool {
        matches!(self.base, Base::ErrorsCount | Base::Latency(Quantile::Max))
    }

    /// Parses a limit written for this metric (`250ms`, `1%`, `0`, `150/s`).
    pub fn parse_limit(self, text: &str) -> Result<f64, String> {
        self.base.parse_limit(text)
    }

    /// Renders a value of this metric for a person.
    pub fn render(self, v: f64) -> String {
        self.base.render(v)
    }
}

impl Base {
    fn parse(name: &str) -> Option<Base> {
        if let Some(rest) = name.strip_prefix("prom.") {
            let (query, agg) = match rest.rsplit_once('.') {
                Some((q, a)) => (q, PROM_AGGS.iter().find(|(n, _)| *n == a).map(|(_, a)| *a)?),
                None => (rest, PromAgg::Mean),
            };
            return is_query_name(query).then(|| Base::Prom(intern(query), agg));
        }
        if let Some(q) = name.strip_prefix("latency.") {
            return QUANTILES.iter().find(|(n, _)| *n == q).map(|(_, q)| Base::Latency(*q));
        }
        if let Some(q) = name.strip_prefix("freshness.") {
            return FRESHNESS.iter().find(|(n, _)| *n == q).map(|(_, q)| Base::Freshness(*q));
        }
        if let Some(d) = name.strip_prefix("data.") {
            if let Some(base) = d.strip_suffix("_rate") {
                return DATA_FIELDS
                    .iter()
                    .find(|(n, _)| *n == base && !matches!(*n, "sent" | "acked"))
                    .map(|(_, f)| Base::DataRate(*f));
            }
            return DATA_FIELDS.iter().find(|(n, _)| *n == d).map(|(_, f)| Base::Data(*f));
        }
        match name {
            "errors.rate" => Some(Base::ErrorsRate),
            "errors.count" => Some(Base::ErrorsCount),
            "throughput" => Some(Base::Throughput),
            "recovery.time" => Some(Base::RecoveryTime),
            "flags.pii_exposed" => Some(Base::FlagsPiiExposed),
            _ => None,
        }
    }

    fn value(self, m: &SliceMetrics) -> Option<f64> {
        let count = |f: DataField| {
            let d = &m.data;
            (match f {
                DataField::Sent => d.sent,
                DataField::Acked => d.acked,
                DataField::Lost => d.lost,
                DataField::Duplicated => d.duplicated,
                DataField::Corrupted => d.corrupted,
                DataField::AcceptedInvalid => d.accepted_invalid,
                DataField::RejectedValid => d.rejected_valid,
                DataField::PiiExposed => d.pii_exposed,
            }) as f64
        };
        match self {
            Base::Latency(q) => match q {
                Quantile::P50 => m.latency.p50,
                Quantile::P90 => m.latency.p90,
                Quantile::P95 => m.latency.p95,
                Quantile::P99 => m.latency.p99,
                Quantile::P999 => m.latency.p999,
                Quantile::Max => m.latency.max,
                Quantile::Mean => m.latency.mean,
            },
            Base::ErrorsRate => (m.requests > 0).then(|| m.error_rate()),
            Base::ErrorsCount => Some(m.errors as f64),
            Base::Throughput => Some(m.throughput),
            Base::Data(f) => Some(count(f)),
            Base::DataRate(f) => (m.data.acked > 0).then(|| count(f) / m.data.acked as f64),
            Base::Freshness(_) | Base::RecoveryTime | Base::FlagsPiiExposed | Base::Prom(..) => None,
        }
    }

    fn parse_limit(self, text: &str) -> Result<f64, String> {
        match self {
            Base::Latency(_) | Base::Freshness(_) | Base::RecoveryTime => {
                units::parse_duration(text).map(|d| d.as_secs_f64() * 1000.0)
            }
            Base::ErrorsRate | Base::DataRate(_) => units::parse_fraction(text),
            Base::Throughput => {
                if text.contains('/') {
                    units::parse_rate(text)
                } else {
                    text.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("expected a rate like `150/s`, got `{}`", text.trim()))
                }
            }
            Base::Prom(..) => match text.trim().parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(v),
                _ => Err(format!("expected a number (the query's own unit), got `{}`", text.trim())),
            },
            Base::ErrorsCount | Base::Data(_) | Base::FlagsPiiExposed => match text.trim().parse::<u64>() {
                Ok(n) => Ok(n as f64),
                Err(_) => Err(format!("expected a whole number of records, got `{}`", text.trim())),
            },
        }
    }

    fn render(self, v: f64) -> String {
        match self {
            Base::Latency(_) | Base::Freshness(_) | Base::RecoveryTime => {
                if v >= 1000.0 {
                    format!("{:.2}s", v / 1000.0)
                } else {
                    format!("{v:.1}ms")
                }
            }
            Base::ErrorsRate | Base::DataRate(_) => format!("{:.2}%", v * 100.0),
            Base::Throughput => format!("{v:.1}/s"),
            Base::ErrorsCount | Base::Data(_) | Base::FlagsPiiExposed => format!("{v:.0}"),
            Base::Prom(..) if v.abs() >= 1e9 => format!("{v:.4e}"),
            Base::Prom(..) => {
                let text = if v.abs() >= 100.0 { format!("{v:.1}") } else { format!("{v:.4}") };
                let text = if text.contains('.') {
                    text.trim_end_matches('0').trim_end_matches('.').to_string()
                } else {
                    text
                };
                if text == "-0" { "0".into() } else { text }
            }
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(p) = self.phase {
            write!(f, "{}.", p.name())?;
        }
        match self.base {
            Base::Latency(q) => {
                let name = QUANTILES.iter().find(|(_, x)| *x == q).map_or("?", |(n, _)| n);
                write!(f, "latency.{name}")
            }
            Base::Freshness(q) => {
                let name = FRESHNESS.iter().find(|(_, x)| *x == q).map_or("?", |(n, _)| n);
                write!(f, "freshness.{name}")
            }
            Base::ErrorsRate => f.write_str("errors.rate"),
            Base::ErrorsCount => f.write_str("errors.count"),
            Base::Throughput => f.write_str("throughput"),
            Base::RecoveryTime => f.write_str("recovery.time"),
            Base::FlagsPiiExposed => f.write_str("flags.pii_exposed"),
            Base::Prom(name, PromAgg::Mean) => write!(f, "prom.{name}"),
            Base::Prom(name, agg) => {
                let agg = PROM_AGGS.iter().find(|(_, x)| *x == agg).map_or("?", |(n, _)| n);
                write!(f, "prom.{name}.{agg}")
            }
            Base::Data(d) | Base::DataRate(d) => {
                let name = DATA_FIELDS.iter().find(|(_, x)| *x == d).map_or("?", |(n, _)| n);
                let suffix = if matches!(self.base, Base::DataRate(_)) { "_rate" } else { "" };
                write!(f, "data.{name}{suffix}")
            }
        }
    }
}

/// A metric is written as its name (`during.latency.p99`).
impl schemars::JsonSchema for Metric {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Metric".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "description": "A metric's name, as criteria write it (`during.latency.p99`)." })
    }
}

impl From<Metric> for String {
    fn from(m: Metric) -> String {
        m.to_string()
    }
}

/// A parsed `METRIC OP VALUE`.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Check {
    pub metric: Metric,
    pub op: Op,
    /// The limit in the metric's unit.
    pub limit: f64,
    /// The check as the user wrote it.
    pub text: String,
}

/// Parses `METRIC OP VALUE`, e.g. `latency.p99 < 250ms`.
pub fn parse_check(text: &str) -> Result<Check, String> {
    let ops = [("<=", Op::Le), (">=", Op::Ge), ("==", Op::Eq), ("!=", Op::Ne), ("<", Op::Lt), (">", Op::Gt)];
    let (at, sym, op) = ops
        .iter()
        .filter_map(|(sym, op)| text.find(sym).map(|at| (at, *sym, *op)))
        .min_by_key(|(at, sym, _)| (*at, usize::MAX - sym.len()))
        .ok_or_else(|| format!("expected `METRIC OP VALUE` like `latency.p99 < 250ms`, got `{text}`"))?;
    let name = text[..at].trim();
    let limit_text = text[at + sym.len()..].trim();
    let metric = Metric::parse(name).ok_or_else(|| {
        let names = Metric::names();
        let bare = Phase::ALL.iter().find_map(|p| name.strip_prefix(&format!("{}.", p.name()))).unwrap_or(name);
        match crate::scenario::diag::nearest(bare, names.iter().map(String::as_str)) {
            Some(best) => format!("unknown metric `{name}`; did you mean `{best}`?"),
            None => format!("unknown metric `{name}`; metrics are {}", names.join(", ")),
        }
    })?;
    if limit_text.is_empty() {
        return Err(format!("`{text}` has no value after `{sym}`"));
    }
    let limit = metric.parse_limit(limit_text)?;
    Ok(Check { metric, op, limit, text: text.trim().to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        let c = parse_check("latency.p99 < 250ms").unwrap();
        assert_eq!((c.metric, c.op, c.limit), (Metric::whole(Base::Latency(Quantile::P99)), Op::Lt, 250.0));
        let c = parse_check("errors.rate<1%").unwrap();
        assert_eq!((c.metric, c.op, c.limit), (Metric::whole(Base::ErrorsRate), Op::Lt, 0.01));
        let c = parse_check("data.lost == 0").unwrap();
        assert_eq!((c.metric, c.op), (Metric::whole(Base::Data(DataField::Lost)), Op::Eq));
        let c = parse_check("latency.p50 <= 1s").unwrap();
        assert_eq!((c.op, c.limit), (Op::Le, 1000.0));
        let c = parse_check("data.lost_rate != 0.5%").unwrap();
        assert_eq!((c.metric, c.op, c.limit), (Metric::whole(Base::DataRate(DataField::Lost)), Op::Ne, 0.005));
        let c = parse_check("during.latency.p99 < 400ms").unwrap();
        assert_eq!(c.metric, Metric { phase: Some(Phase::During), base: Base::Latency(Quantile::P99) });
        assert_eq!(c.metric.to_string(), "during.latency.p99");
        let c = parse_check("recovery.time < 5s").unwrap();
        assert_eq!((c.metric.base, c.limit), (Base::RecoveryTime, 5000.0));
        assert!(parse_check("during.recovery.time < 5s").is_err());
    }

    #[test]
    fn explains_mistakes() {
        assert!(parse_check("latency.pp99 < 1s").unwrap_err().contains("did you mean `latency.p99`"));
        assert!(parse_check("latency.p99 < 250").unwrap_err().contains("`250ms`"));
        assert!(parse_check("latency.p99 250ms").unwrap_err().contains("METRIC OP VALUE"));
        assert!(parse_check("data.lost == 0.5").unwrap_err().contains("whole number"));
    }

    #[test]
    fn every_listed_name_parses() {
        for name in Metric::names() {
            let m = Metric::parse(&name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(m.to_string(), name);
            let phased = format!("after.{name}");
            if ["recovery", "freshness", "flags"].iter().any(|p| name.starts_with(p)) {
                assert_eq!(Metric::parse(&phased), None, "{name} is the whole stage's only");
            } else {
                assert_eq!(Metric::parse(&phased).unwrap().to_string(), phased);
            }
        }
    }
}
