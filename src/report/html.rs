//! The HTML report (`--report html`): one self-contained file, no script and nothing
//! fetched, that a game-day room can open in any browser.
//!
//! The verdict and its reasons first, then the criteria table, then each stage: its
//! latency over time (p50 and p99, fault windows shaded, flag states in the title), its
//! requests, errors and data-quality counts over time, its percentile spectrum against
//! the first stage's, and stagegate's own health figures. Charts are SVG drawn with
//! `plotters`. Rendered from the report document, like every file format.

use plotters::prelude::*;
use serde_json::Value;

const WIDTH: u32 = 900;
const HEIGHT: u32 = 280;

/// The HTML page of the run `doc` describes.
pub fn render(doc: &Value) -> Result<String, String> {
    let t = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let none = Vec::new();
    let mut page = String::new();
    let verdict = match (doc["error"].as_str(), doc["interrupted"].as_bool().unwrap_or(false), doc["verdict"].as_str())
    {
        (Some(_), ..) => "RUN BROKE",
        (None, true, _) => "INTERRUPTED",
        (None, false, Some(v)) => v,
        _ => "NO VERDICT",
    };
    let class = match verdict {
        "PROMOTE" => "promote",
        "ROLLBACK" => "rollback",
        _ => "other",
    };
    page.push_str(&format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>stagegate: {} {}</title>\n<style>{STYLE}</style></head><body>\n",
        esc(&t(&doc["scenario"])),
        esc(verdict)
    ));
    page.push_str(&format!(
        "<h1><span class=\"verdict {class}\">{}</span> {}</h1>\n<p class=\"meta\">{} · seed {} ({}) · {} → {}</p>\n",
        esc(verdict),
        esc(&t(&doc["scenario"])),
        esc(&t(&doc["file"])),
        esc(&doc["seed"].to_string()),
        esc(&t(&doc["seed_source"])),
        esc(&when(&doc["started_at"])),
        esc(&when(&doc["finished_at"])),
    ));
    if let Some(d) = doc["description"].as_str() {
        page.push_str(&format!("<p>{}</p>\n", esc(d)));
    }
    let lists = [("reasons", "why"), ("warnings", "warnings"), ("overrides", "--set overrides")];
    for (key, title) in lists {
        let items = doc[key].as_array().unwrap_or(&none);
        if !items.is_empty() {
            page.push_str(&format!("<h3>{title}</h3><ul>"));
            for i in items {
                page.push_str(&format!("<li>{}</li>", with_code(&t(i))));
            }
            page.push_str("</ul>\n");
        }
    }
    if let Some(summary) = doc["rollback"]["summary"].as_str() {
        page.push_str(&format!("<h3>rollback</h3><p class=\"rollback\">{}</p>\n", with_code(summary)));
    }
    if let Some(command) = doc["on_verdict"]["command"].as_array() {
        let words: Vec<String> = command.iter().map(t).collect();
        let status =
            doc["on_verdict"]["exit_code"].as_i64().map_or("did not finish".to_string(), |c| format!("exited {c}"));
        page.push_str(&format!(
            "<h3>on_verdict</h3><p><code>{}</code> {status}</p><pre>{}</pre>\n",
            esc(&words.join(" ")),
            esc(&t(&doc["on_verdict"]["output"]))
        ));
    }
    let failures = doc["failures"].as_array().unwrap_or(&none);
    if failures.len() > 1 {
        page.push_str("<h3>flag changes before each failure</h3><ul>");
        for f in failures {
            page.push_str(&format!("<li>{}</li>", with_code(&t(&f["summary"]))));
        }
        page.push_str("</ul>\n");
    }
    for e in doc["exposures"].as_array().unwrap_or(&none) {
        page.push_str(&format!(
            "<h3>exposure <code>{}</code> of <code>{}</code></h3>\n<table><tr><th>step</th><th>exposed</th><th>outcome</th><th>failed</th></tr>\n",
            esc(&t(&e["stage"])),
            esc(&t(&e["flag"]))
        ));
        for step in e["steps"].as_array().unwrap_or(&none) {
            let failed: Vec<String> = step["failed"].as_array().unwrap_or(&none).iter().map(t).collect();
            let outcome = t(&step["outcome"]);
            page.push_str(&format!(
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(&outcome),
                esc(&t(&step["stage"])),
                crate::scenario::units::format_share(step["share"].as_f64().unwrap_or(0.0)),
                esc(&outcome.replace('_', " ")),
                esc(&failed.join("; "))
            ));
        }
        page.push_str("</table>\n");
    }
    for m in doc["matrices"].as_array().unwrap_or(&none) {
        let dims: Vec<String> = m["dimensions"].as_array().unwrap_or(&none).iter().map(|d| esc(&t(d))).collect();
        page.push_str(&format!(
            "<h3>matrix <code>{}</code> ({})</h3>\n<table class=\"matrix\"><tr><th>{}</th><th>outcome</th><th>failed</th></tr>\n",
            esc(&t(&m["stage"])),
            esc(&t(&m["mode"])),
            dims.join("</th><th>")
        ));
        for c in m["cells"].as_array().unwrap_or(&none) {
            let values: Vec<String> = c["values"].as_array().unwrap_or(&none).iter().map(|v| esc(&t(v))).collect();
            let failed: Vec<String> = c["failed"].as_array().unwrap_or(&none).iter().map(t).collect();
            let outcome = t(&c["outcome"]);
            page.push_str(&format!(
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(&outcome),
                values.join("</td><td>"),
                esc(&outcome.replace('_', " ")),
                esc(&failed.join("; "))
            ));
        }
        page.push_str("</table>\n");
    }
    criteria_table(&mut page, doc["assessments"].as_array().unwrap_or(&none));
    let stages = doc["stages"].as_array().unwrap_or(&none);
    let faults = doc["faults"].as_array().unwrap_or(&none);
    let baseline = stages.first();
    for st in stages {
        let name = t(&st["name"]);
        page.push_str(&format!("<section class=\"stage\"><h2>stage <code>{}</code>", esc(&name)));
        if !st["completed"].as_bool().unwrap_or(false) {
            page.push_str(" <span class=\"warn\">(cut short)</span>");
        }
        page.push_str("</h2>\n");
        let flags = flag_line(&st["flags"]);
        if !flags.is_empty() {
            page.push_str(&format!("<p>flags: <code>{}</code></p>\n", esc(&flags)));
        }
        let windows: Vec<(f64, f64, String)> = faults
            .iter()
            .filter(|f| f["stage"].as_str() == Some(&name))
            .map(|f| {
                let from = num(&f["started_secs"]).unwrap_or(0.0);
                let label = format!("{} at {}", t(&f["kind"]), t(&f["at"]));
                (from, num(&f["ended_secs"]).unwrap_or(f64::INFINITY), label)
            })
            .collect();
        for (from, to, label) in &windows {
            let to = if to.is_finite() { format!("{to:.1}s") } else { "the end".into() };
            page.push_str(&format!("<p class=\"fault\">fault {} from {from:.1}s to {to}</p>\n", esc(label)));
        }
        let series = &st["series"];
        let title = format!("{name}: latency over time (ms)");
        page.push_str("<figure class=\"chart latency\">");
        page.push_str(&latency_chart(&title, series, &windows)?);
        page.push_str("</figure>\n<figure class=\"chart counts\">");
        page.push_str(&counts_chart(&format!("{name}: requests and errors per interval"), series, &windows, &TRAFFIC)?);
        // Data quality on an axis of its own: a few duplicated records beside hundreds
        // sent would lie flat on zero.
        page.push_str("</figure>\n<figure class=\"chart quality\">");
        page.push_str(&counts_chart(
            &format!("{name}: records lost, duplicated and corrupted per interval"),
            series,
            &windows,
            &QUALITY,
        )?);
        page.push_str("</figure>\n");
        if let Some(base) = baseline.filter(|b| b["name"] != st["name"]) {
            page.push_str("<figure class=\"chart spectrum\">");
            page.push_str(&spectrum_chart(
                &name,
                &st["metrics"]["latency"],
                &t(&base["name"]),
                &base["metrics"]["latency"],
            )?);
            page.push_str("</figure>\n");
        }
        for (flag, e) in st["flag_exposure"].as_object().into_iter().flatten() {
            let values: Vec<String> = e["by_variant"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(v, x)| {
                    format!(
                        "{} {} ({:.1}%)",
                        esc(v),
                        x["evaluations"].as_u64().unwrap_or(0),
                        x["share"].as_f64().unwrap_or(0.0) * 100.0
                    )
                })
                .collect();
            page.push_str(&format!(
                "<p class=\"meta\">flag <code>{}</code> ({}): {}</p>\n",
                esc(flag),
                esc(&t(&e["how"])),
                if values.is_empty() { "-".to_string() } else { values.join(", ") }
            ));
        }
        variants_table(&mut page, &st["metrics"]["variants"]);
        for d in st["variant_differences"].as_array().into_iter().flatten() {
            let diff = |v: &Value| v.as_f64().map_or("-".to_string(), |v| format!("{v:+.1} ms"));
            page.push_str(&format!(
                "<p class=\"meta\"><code>{}</code> {} against {} in the same window: p50 {}, p99 {}, errors {:+.2} points ({} and {} requests)</p>\n",
                esc(&t(&d["flag"])),
                esc(&t(&d["variant"])),
                esc(&t(&d["against"])),
                diff(&d["p50_diff_ms"]),
                diff(&d["p99_diff_ms"]),
                d["error_rate_diff"].as_f64().unwrap_or(0.0) * 100.0,
                d["requests"].as_u64().unwrap_or(0),
                d["against_requests"].as_u64().unwrap_or(0)
            ));
        }
        health_table(&mut page, &st["health"]);
        page.push_str("</section>\n");
    }
    page.push_str(&format!(
        "<p class=\"meta\">stagegate {} · report_dir {}</p>\n</body></html>\n",
        esc(&t(&doc["stagegate_version"])),
        esc(&t(&doc["report_dir"]))
    ));
    Ok(page)
}

fn criteria_table(page: &mut String, assessments: &[Value]) {
    if assessments.is_empty() {
        return;
    }
    let t = |v: &Value| v.as_str().unwrap_or_default().to_string();
    page.push_str("<h2>criteria</h2>\n<table class=\"criteria\"><tr><th></th><th>stage</th><th>criterion</th><th>measured</th><th>limit</th><th>samples</th><th>note</th></tr>\n");
    for a in assessments {
        let (mark, class) = match (a["outcome"].as_str(), a["level"].as_str()) {
            (Some("pass"), _) => ("pass", "pass"),
            (Some("fail"), Some("enforce")) => ("FAIL", "fail"),
            (Some("fail"), Some(level)) => (level, "soft"),
            _ => ("INCONCLUSIVE", "inconclusive"),
        };
        page.push_str(&format!(
            "<tr class=\"{class}\"><td>{mark}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            esc(&t(&a["stage"])),
            esc(&super::criterion_label(a)),
            esc(&t(&a["measured_text"])),
            esc(&t(&a["limit_text"])),
            a["samples"].as_u64().map_or("-".into(), |n| n.to_string()),
            esc(a["note"].as_str().unwrap_or("")),
        ));
    }
    page.push_str("</table>\n");
}

/// Each flag variant of a split stage: its requests, latency, errors and data counts.
fn variants_table(page: &mut String, variants: &Value) {
    let Some(all) = variants.as_object().filter(|v| !v.is_empty()) else { return };
    let ms = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1} ms"));
    let n = |v: &Value| v.as_u64().map_or("-".to_string(), |x| x.to_string());
    page.push_str("<table class=\"variants\"><tr><th>flag variant</th><th>requests</th><th>p50</th><th>p99</th><th>errors</th><th>lost</th><th>duplicated</th><th>corrupted</th></tr>\n");
    for (name, v) in all {
        page.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            esc(name),
            n(&v["requests"]),
            ms(&v["latency"]["p50"]),
            ms(&v["latency"]["p99"]),
            n(&v["errors"]),
            n(&v["data"]["lost"]),
            n(&v["data"]["duplicated"]),
            n(&v["data"]["corrupted"]),
        ));
    }
    page.push_str("</table>\n");
}

fn health_table(page: &mut String, h: &Value) {
    let lag = |v: &Value| match (v["p50_ms"].as_f64(), v["p99_ms"].as_f64(), v["max_ms"].as_f64()) {
        (Some(a), Some(b), Some(c)) => format!("p50 {a:.1} ms, p99 {b:.1} ms, max {c:.1} ms"),
        _ => "-".into(),
    };
    page.push_str("<table class=\"health\"><tr><th colspan=\"2\">stagegate's own health</th></tr>\n");
    let rows = [
        ("send lag", lag(&h["send_lag"])),
        ("timer lag", lag(&h["timer_lag"])),
        ("builtin target's timer lag", lag(&h["builtin_timer_lag"])),
        ("proxy hold overrun", lag(&h["proxy_hold_overrun"])),
        ("dropped sends", h["dropped"].to_string()),
        ("behind", h["behind"].as_str().unwrap_or("no").to_string()),
    ];
    for (k, v) in rows {
        page.push_str(&format!("<tr><td>{k}</td><td>{}</td></tr>\n", esc(&v)));
    }
    page.push_str("</table>\n");
}

/// `(at_secs, value)` of one field of the series' points, where it has one.
/// A number from a saved report, when it is one a chart can hold (a crafted report's
/// 1e308 would overflow the axis to infinity).
fn num(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite() && x.abs() < 1e12)
}

fn points(series: &Value, field: &str) -> Vec<(f64, f64)> {
    let width = interval(series);
    series["points"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| Some((num(&p["at_secs"])? + width / 2.0, num(&p[field])?))).collect())
        .unwrap_or_default()
}

fn interval(series: &Value) -> f64 {
    num(&series["interval_secs"]).filter(|w| (0.001..=86_400.0).contains(w)).unwrap_or(1.0)
}

fn span(series: &Value) -> f64 {
    series["points"].as_array().map_or(1.0, |p| (p.len() as f64 * interval(series)).max(1.0))
}

fn chart_error(e: impl std::fmt::Display) -> String {
    format!("cannot draw a chart: {e}")
}

/// The series fields of the latency chart: (field, label, colour).
const LATENCY: [(&str, &str, RGBColor); 2] = [("p50_ms", "p50", BLUE), ("p99_ms", "p99", RED)];

pub(crate) fn latency_chart(title: &str, series: &Value, faults: &[(f64, f64, String)]) -> Result<String, String> {
    time_chart(title, series, faults, &LATENCY, "ms", SeriesLabelPosition::UpperLeft)
}

pub(crate) fn counts_chart(
    title: &str,
    series: &Value,
    faults: &[(f64, f64, String)],
    lines: &[(&str, &str, RGBColor)],
) -> Result<String, String> {
    time_chart(title, series, faults, lines, "per interval", SeriesLabelPosition::UpperRight)
}

/// The series fields of the traffic chart: (field, label, colour).
pub(crate) const TRAFFIC: [(&str, &str, RGBColor); 2] =
    [("sent", "sent", RGBColor(90, 90, 90)), ("failed", "errors", RED)];
/// The series fields of the data-quality chart.
const QUALITY: [(&str, &str, RGBColor); 3] = [
    ("lost", "lost", RGBColor(160, 0, 160)),
    ("duplicated", "duplicated", RGBColor(230, 130, 0)),
    ("corrupted", "corrupted", RGBColor(0, 140, 140)),
];

/// A chart of `lines` (series fields) over the stage's time, fault windows shaded.
fn time_chart(
    title: &str,
    series: &Value,
    faults: &[(f64, f64, String)],
    lines: &[(&str, &str, RGBColor)],
    y_desc: &str,
    legend: SeriesLabelPosition,
) -> Result<String, String> {
    let data: Vec<_> = lines.iter().map(|(field, label, color)| (points(series, field), *label, *color)).collect();
    let top = data.iter().flat_map(|(p, ..)| p.iter().map(|(_, v)| *v)).fold(1.0, f64::max) * 1.1;
    let x_end = span(series);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..x_end, 0f64..top)
            .map_err(chart_error)?;
        // Only the labelled grid lines: the finer ones would triple the SVG, which the live
        // page sends once a second.
        chart
            .configure_mesh()
            .max_light_lines(0)
            .x_desc("seconds into the stage")
            .y_desc(y_desc)
            .draw()
            .map_err(chart_error)?;
        shade_faults(&mut chart, faults, x_end, top)?;
        for (p, label, color) in data {
            if p.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(p, color.stroke_width(2)))
                .map_err(chart_error)?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(legend)
            .draw()
            .map_err(chart_error)?;
        root.present().map_err(chart_error)?;
    }
    Ok(svg)
}

const SPECTRUM: [(&str, &str); 6] =
    [("p50", "p50"), ("p90", "p90"), ("p95", "p95"), ("p99", "p99"), ("p999", "p99.9"), ("max", "max")];

fn spectrum_chart(name: &str, latency: &Value, base_name: &str, base: &Value) -> Result<String, String> {
    let line = |l: &Value| -> Vec<(f64, f64)> {
        SPECTRUM.iter().enumerate().filter_map(|(i, (k, _))| Some((i as f64, num(&l[*k])?))).collect()
    };
    let (this, other) = (line(latency), line(base));
    let top = this.iter().chain(&other).map(|(_, v)| *v).fold(1.0, f64::max) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{name}: latency percentiles against `{base_name}` (ms)"), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.2f64..(SPECTRUM.len() as f64 - 0.8), 0f64..top)
            .map_err(chart_error)?;
        chart
            .configure_mesh()
            .x_labels(SPECTRUM.len())
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 {
                    SPECTRUM.get(i as usize).map_or(String::new(), |(_, l)| l.to_string())
                } else {
                    String::new()
                }
            })
            .y_desc("ms")
            .draw()
            .map_err(chart_error)?;
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(LineSeries::new(other.clone(), grey.stroke_width(2)))
            .map_err(chart_error)?
            .label(base_name.to_string())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], grey.stroke_width(2)));
        chart.draw_series(other.iter().map(|p| Circle::new(*p, 3, grey.filled()))).map_err(chart_error)?;
        chart
            .draw_series(LineSeries::new(this.clone(), BLUE.stroke_width(2)))
            .map_err(chart_error)?
            .label(name.to_string())
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE.stroke_width(2)));
        chart.draw_series(this.iter().map(|p| Circle::new(*p, 3, BLUE.filled()))).map_err(chart_error)?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(chart_error)?;
        root.present().map_err(chart_error)?;
    }
    Ok(svg)
}

fn shade_faults<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    faults: &[(f64, f64, String)],
    x_end: f64,
    top: f64,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let shade = RGBColor(255, 170, 0).mix(0.18).filled();
    chart
        .draw_series(faults.iter().map(|(from, to, _)| Rectangle::new([(*from, 0.0), (to.min(x_end), top)], shade)))
        .map_err(chart_error)?;
    Ok(())
}

/// A stage's flags as `name=value, ...` from report.json's flag states.
fn flag_line(flags: &Value) -> String {
    let plain = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    flags
        .as_object()
        .map(|f| {
            f.iter()
                .map(|(k, v)| {
                    let state = if let Some(x) = v.get("fixed") {
                        plain(x)
                    } else if let Some(s) = v.get("split") {
                        let parts: Vec<String> = s["variants"]
                            .as_array()
                            .map(|vs| {
                                vs.iter()
                                    .map(|p| format!("{} {:.0}%", plain(&p[0]), p[1].as_f64().unwrap_or(0.0) * 100.0))
                                    .collect()
                            })
                            .unwrap_or_default();
                        format!("{} / {}", parts.join(" / "), plain(&s["rest"]))
                    } else {
                        plain(v)
                    };
                    format!("{k}={state}")
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// An RFC 3339 time as a person reads it, to the second.
pub fn when(v: &Value) -> String {
    let text = v.as_str().unwrap_or_default();
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| text.to_string())
}

/// Text for HTML, with the `code` spans stagegate's own sentences use shown as code.
fn with_code(s: &str) -> String {
    let parts: Vec<&str> = s.split('`').collect();
    if parts.len().is_multiple_of(2) {
        // Unbalanced: shown as written.
        return esc(s);
    }
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| if i % 2 == 1 { format!("<code>{}</code>", esc(p)) } else { esc(p) })
        .collect()
}

/// Text made safe for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters and direction overrides from a name: shown as spaces.
            c if c != '\n' && super::hidden(c) => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:960px;color:#222}\
tr.failed td{background:#ffebe9}tr.passed td,tr.held td{background:#dafbe1}tr.inconclusive td{background:#fff8c5}tr.not_run td{color:#888}\
.verdict{padding:.1em .5em;border-radius:4px;color:#fff}.promote{background:#1a7f37}.rollback{background:#cf222e}\
.other{background:#9a6700}.meta{color:#666;font-size:.9em}table{border-collapse:collapse;margin:1em 0}\
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;font-size:.9em}tr.fail td{background:#ffebe9}\
tr.inconclusive td{background:#fff8c5}tr.soft td{background:#f6f8fa}.fault{color:#9a6700;margin:.2em 0}\
figure{margin:.5em 0}section.stage{border-top:2px solid #ddd;margin-top:2em}.warn{color:#cf222e}";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_page_holds_its_charts_and_escapes_what_it_shows() {
        let points: Vec<Value> = (0..10)
            .map(|i| json!({"at_secs": i as f64, "sent": 50, "failed": if i == 5 { 3 } else { 0 }, "p50_ms": 2.0, "p99_ms": if (3..6).contains(&i) { 60.0 } else { 5.0 }, "lost": 0, "duplicated": 0, "corrupted": 0}))
            .collect();
        let stage = |name: &str| {
            json!({"name": name, "completed": true, "flags": {"f": {"fixed": true}},
            "metrics": {"latency": {"p50": 2.0, "p90": 4.0, "p95": 5.0, "p99": 50.0, "p999": 60.0, "max": 61.0}},
            "series": {"interval_secs": 1.0, "points": points.clone()}, "health": {"dropped": 0, "behind": null}})
        };
        let doc = json!({
            "scenario": "demo", "verdict": "PROMOTE", "interrupted": false, "reasons": ["<all> held"],
            "stages": [stage("baseline"), stage("candidate")],
            "faults": [{"stage": "candidate", "kind": "latency", "at": "store", "started_secs": 3.0, "ended_secs": 6.0}],
            "assessments": [{"stage": "candidate", "criterion": "latency.p99 < 250ms", "measured_text": "50.0ms", "limit_text": "< 250.0ms", "samples": 500, "outcome": "pass", "level": "enforce"}]
        });
        let html = render(&doc).unwrap();
        assert_eq!(html.matches("<svg").count(), 7, "four charts per stage, the first not against itself");
        assert!(html.contains("&lt;all&gt; held") && !html.contains("<all>"));
        assert!(html.contains("fault latency at store from 3.0s to 6.0s"));
        // Nothing fetched: no script, no linked resource (the SVG namespace is only a name).
        assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="), "{html}");
    }
}
