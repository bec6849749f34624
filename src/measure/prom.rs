//! The system's own metrics, read from a Prometheus server (`metrics:` in a scenario),
//! so criteria can judge what the system says of itself (`prom.queue_depth.max <
//! 5000`) beside what stagegate measures from outside.
//!
//! After a stage ends (and `settle` has passed, so the server has scraped its last
//! seconds), each named PromQL query is evaluated with `/api/v1/query_range` over the
//! stage: from its start to its end, every `step`. Each point is the query's value at
//! that instant (a range function such as `rate(x[10s])` looks back over its own
//! range). The points after the warm-up are the stage's; each is also filed under the
//! fault phase (`before`, `during`, `after`) its instant falls in, as requests are.
//! Each window is summarised by its mean, max, min and last value and its number of
//! points. A query that fails, answers no series, or more than one (aggregate them in
//! the query: `sum(...)`, `max(...)`), leaves the metric unknown with that reason, and
//! the criteria on it INCONCLUSIVE.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::Phase;

/// The checked `metrics:` section: a Prometheus server and the queries criteria read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromSource {
    /// The server's base URL (`http://127.0.0.1:9090`).
    pub url: String,
    /// The resolution of each query over a stage.
    #[serde(with = "crate::report::serde_duration")]
    pub step: Duration,
    /// How long after a stage's end to wait before querying it.
    #[serde(with = "crate::report::serde_duration")]
    pub settle: Duration,
    /// Each query's deadline.
    #[serde(with = "crate::report::serde_duration")]
    pub timeout: Duration,
    /// `(name, PromQL)`, as criteria name them (`prom.NAME`).
    pub queries: Vec<(String, String)>,
}

/// One window's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct PromSlice {
    /// Points in the window.
    pub samples: u64,
    pub mean: Option<f64>,
    pub max: Option<f64>,
    pub min: Option<f64>,
    pub last: Option<f64>,
}

impl PromSlice {
    fn of(values: &[f64]) -> PromSlice {
        if values.is_empty() {
            return PromSlice::default();
        }
        PromSlice {
            samples: values.len() as u64,
            mean: Some(values.iter().sum::<f64>() / values.len() as f64),
            max: values.iter().copied().reduce(f64::max),
            min: values.iter().copied().reduce(f64::min),
            last: values.last().copied(),
        }
    }
}

/// One query's figures in a stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct PromFigures {
    /// The PromQL evaluated.
    pub query: String,
    /// The judged part of the stage (after the warm-up).
    pub whole: PromSlice,
    /// By fault phase.
    pub phases: BTreeMap<String, PromSlice>,
    /// Why the figures are unknown, when they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

/// The most points one query may answer for a stage (Prometheus's own limit is 11000).
const MAX_POINTS: usize = 11_000;
/// The most characters of a server's own error message kept.
const MAX_ERROR_TEXT: usize = 300;

/// A server's error message, shown safely and cut to [`MAX_ERROR_TEXT`].
fn their_words(text: &str) -> String {
    let shown = crate::flags::audit::shown(text);
    if shown.chars().count() > MAX_ERROR_TEXT {
        format!("{}…", shown.chars().take(MAX_ERROR_TEXT).collect::<String>())
    } else {
        shown
    }
}

/// The most bytes of one answer read.
const MAX_ANSWER: usize = 8 * 1024 * 1024;

/// A stage as the queries see it.
pub struct StageWindow<'a> {
    /// When it started, in seconds since the Unix epoch.
    pub start_unix: f64,
    /// How long it ran.
    pub ran: Duration,
    pub warmup: Duration,
    /// The fault phase of an offset into it.
    pub phase: &'a (dyn Fn(Duration) -> Phase + Sync),
}

/// Evaluates every query of `source` over the stage, after waiting `settle` (cut short
/// by `cancel`, which leaves every figure unknown).
pub async fn collect(
    source: &PromSource,
    stage: &StageWindow<'_>,
    client: &reqwest::Client,
    cancel: &CancellationToken,
) -> BTreeMap<String, PromFigures> {
    let stopped = tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(source.settle) => false,
    };
    // Every query at once: a server that hangs costs one `timeout`, not one per query.
    let answers = futures_util::future::join_all(source.queries.iter().map(|(_, query)| async move {
        if stopped {
            return Err("the run was stopped before the stage's metrics were read".to_string());
        }
        tokio::select! {
            _ = cancel.cancelled() => Err("the run was stopped while the metrics were read".to_string()),
            a = query_range(source, query, stage, client) => a,
        }
    }))
    .await;
    let mut out = BTreeMap::new();
    for ((name, query), answer) in source.queries.iter().zip(answers) {
        let figures = match answer {
            Ok((points, not_numbers)) => {
                let mut f = summarize(query, &points, stage);
                if f.whole.samples == 0 && not_numbers > 0 {
                    f.missing = Some(format!(
                        "`{query}` was not a number at {not_numbers} points (NaN or infinite: a ratio over nothing, such as 0/0 when a rate is 0)"
                    ));
                }
                f
            }
            Err(why) => PromFigures {
                query: query.clone(),
                missing: Some(format!("`{query}` on {}: {why}", source.url)),
                ..PromFigures::default()
            },
        };
        out.insert(name.clone(), figures);
    }
    out
}

/// An error with its causes (`connection refused` is a cause of reqwest's error).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Checks, before anything runs, that the server answers and takes every query (an
/// instant query each: a series may well be empty yet). The error names the query.
pub async fn preflight(source: &PromSource, client: &reqwest::Client) -> Result<(), String> {
    let url = format!("{}/api/v1/query", source.url.trim_end_matches('/'));
    for (name, query) in &source.queries {
        let response =
            client.post(&url).form(&[("query", query.as_str())]).timeout(source.timeout).send().await.map_err(|e| {
                format!("the Prometheus server at {} (`metrics.prometheus`) does not answer: {}", source.url, chain(&e))
            })?;
        let status = response.status();
        let body = read_bounded(response).await?;
        let doc: Value = serde_json::from_slice(&body).map_err(|_| {
            format!(
                "{} answered {status} without Prometheus's JSON (`metrics.prometheus`): is it a Prometheus server?",
                source.url
            )
        })?;
        if doc["status"] != "success" {
            let why = doc["error"].as_str().unwrap_or("no reason given");
            return Err(format!("Prometheus refuses `metrics.queries.{name}` ({status}): {}", their_words(why)));
        }
    }
    Ok(())
}

/// The points `(offset into the stage, value)` of the query's single series, and how
/// many points were not numbers (NaN); infinite points are kept (a ratio over zero).
async fn query_range(
    source: &PromSource,
    query: &str,
    stage: &StageWindow<'_>,
    client: &reqwest::Client,
) -> Result<(Vec<(Duration, f64)>, usize), String> {
    let end = stage.start_unix + stage.ran.as_secs_f64();
    let step = source.step.as_secs_f64();
    let url = format!("{}/api/v1/query_range", source.url.trim_end_matches('/'));
    let form = [
        ("query", query.to_string()),
        ("start", format!("{:.3}", stage.start_unix)),
        ("end", format!("{end:.3}")),
        ("step", format!("{step}")),
    ];
    let response = client
        .post(&url)
        .form(&form)
        .timeout(source.timeout)
        .send()
        .await
        .map_err(|e| format!("the server did not answer ({})", chain(&e)))?;
    let status = response.status();
    let body = read_bounded(response).await?;
    let doc: Value = serde_json::from_slice(&body)
        .map_err(|_| format!("the answer ({status}) is not Prometheus's JSON: is this a Prometheus server?"))?;
    if doc["status"] != "success" {
        let why = doc["error"].as_str().unwrap_or("no reason given");
        return Err(format!("the query failed ({status}): {}", their_words(why)));
    }
    let series = doc["data"]["result"].as_array().ok_or("the answer holds no result list")?;
    match series.len() {
        0 => return Err("no series: the metric is not there (yet), or the query selects nothing".into()),
        1 => {}
        n => return Err(format!("{n} series: aggregate them in the query (`sum(...)`, `max(...)`) to one")),
    }
    let values = series[0]["values"].as_array().ok_or("the series holds no values")?;
    let mut points = Vec::new();
    let mut not_numbers = 0;
    for v in values.iter().take(MAX_POINTS) {
        let (Some(t), Some(x)) = (v[0].as_f64(), v[1].as_str().and_then(|s| s.parse::<f64>().ok())) else {
            continue;
        };
        // NaN (0/0 in a quiet second) says nothing; an infinity (x/0) is kept, to be
        // named: it must not pass quietly.
        if x.is_nan() {
            not_numbers += 1;
            continue;
        }
        let offset = t - stage.start_unix;
        if offset >= 0.0 {
            points.push((Duration::from_secs_f64(offset), x));
        }
    }
    Ok((points, not_numbers))
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("the answer broke off ({e})"))? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("the answer is larger than {} MiB", MAX_ANSWER / (1024 * 1024)));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The figures of `points` over the stage's judged part and each fault phase; a window
/// with an infinite point (a ratio over zero) has no figures, and says why.
fn summarize(query: &str, points: &[(Duration, f64)], stage: &StageWindow<'_>) -> PromFigures {
    let judged: Vec<(Duration, f64)> =
        points.iter().copied().filter(|(t, _)| *t >= stage.warmup && *t <= stage.ran).collect();
    let infinite = judged.iter().filter(|(_, v)| v.is_infinite()).count();
    if infinite > 0 {
        return PromFigures {
            query: query.to_string(),
            missing: Some(format!(
                "`{query}` was infinite at {infinite} of its points in the stage (a ratio over zero, such as failures over no successes): no figure stands for it"
            )),
            ..PromFigures::default()
        };
    }
    let whole: Vec<f64> = judged.iter().map(|(_, v)| *v).collect();
    let mut phases = BTreeMap::new();
    for phase in Phase::ALL {
        let values: Vec<f64> = judged.iter().filter(|(t, _)| (stage.phase)(*t) == phase).map(|(_, v)| *v).collect();
        if !values.is_empty() {
            phases.insert(phase.name().to_string(), PromSlice::of(&values));
        }
    }
    let missing = whole.is_empty().then(|| {
        format!("`{query}` had no value in the stage's judged part (after its warm-up): the server had not scraped it yet, or the series was empty then")
    });
    PromFigures { query: query.to_string(), whole: PromSlice::of(&whole), phases, missing }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_take_the_points_after_the_warmup_by_phase() {
        let phase = |t: Duration| if (4..6).contains(&t.as_secs()) { Phase::During } else { Phase::Before };
        let stage =
            StageWindow { start_unix: 0.0, ran: Duration::from_secs(8), warmup: Duration::from_secs(2), phase: &phase };
        let points: Vec<(Duration, f64)> = (0..10).map(|s| (Duration::from_secs(s), s as f64)).collect();
        let f = summarize("q", &points, &stage);
        // Seconds 2 to 8 are judged; 4 and 5 are during the fault.
        assert_eq!(f.whole.samples, 7);
        assert_eq!((f.whole.min, f.whole.max, f.whole.last), (Some(2.0), Some(8.0), Some(8.0)));
        assert_eq!(f.whole.mean, Some(5.0));
        assert_eq!(f.phases["during"].samples, 2);
        assert_eq!(f.phases["during"].mean, Some(4.5));
        assert!(f.missing.is_none());
        let early = summarize("q", &points[..2], &stage);
        assert!(early.missing.unwrap().contains("no value"));
        // An infinite point (x/0) leaves the window without figures: `max < 2` must not pass.
        let mut with_inf = points.clone();
        with_inf[5].1 = f64::INFINITY;
        let f = summarize("q", &with_inf, &stage);
        assert_eq!(f.whole.max, None);
        assert!(f.missing.unwrap().contains("infinite at 1"));
    }
}
