//! The Markdown summary (`--report markdown`): for a pull request comment or a CI job
//! summary. The verdict comes first, then what decided it (failed and inconclusive
//! criteria with their values), a table of the stages, the faults as they happened,
//! and links to the run's other files.
//!
//! Rendered from the report document, like every file format. Kept under
//! [`MAX_BYTES`] (GitHub refuses a step summary over 1 MiB): past it, table rows are
//! left out and the summary says how many.

use serde_json::Value;

/// The most a summary may weigh (GitHub's step-summary limit, with room to spare).
pub const MAX_BYTES: usize = 1000 * 1024;

/// The Markdown summary of `doc`; `files` are the run's other outputs as (label,
/// relative path), linked at the end.
pub fn render(doc: &Value, files: &[(String, String)]) -> String {
    let t = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let none = Vec::new();
    let mut head = String::new();
    let verdict = doc["verdict"].as_str();
    let (word, sign) = match (verdict, doc["error"].as_str(), doc["interrupted"].as_bool().unwrap_or(false)) {
        (_, Some(_), _) => ("RUN BROKE", "⛔"),
        (_, None, true) => ("INTERRUPTED", "⏹️"),
        (Some("PROMOTE"), ..) => ("PROMOTE", "✅"),
        (Some("ROLLBACK"), ..) => ("ROLLBACK", "❌"),
        (Some("INCONCLUSIVE"), ..) => ("INCONCLUSIVE", "⚠️"),
        _ => ("NO VERDICT", "⛔"),
    };
    head.push_str(&format!("## {sign} {word}: `{}`\n\n", code(&t(&doc["scenario"]))));
    head.push_str(&format!(
        "Scenario `{}`, seed {} ({}), {} stage(s), {} to {}.\n",
        code(&t(&doc["file"])),
        cell(&doc["seed"].to_string()),
        t(&doc["seed_source"]),
        doc["stages"].as_array().map_or(0, Vec::len),
        super::html::when(&doc["started_at"]),
        super::html::when(&doc["finished_at"]),
    ));
    // The head is never cut by the size limit, so each of its lists and lines is
    // bounded here: a run's own text (a description, an override) can be long.
    let listed = |key: &str| -> (Vec<String>, usize) {
        let all = doc[key].as_array().unwrap_or(&none);
        (all.iter().take(HEAD_ITEMS).map(|v| clip(&t(v))).collect(), all.len().saturating_sub(HEAD_ITEMS))
    };
    let (overrides, more) = listed("overrides");
    for o in overrides {
        head.push_str(&format!("Override: `--set {}`\n", code(&o)));
    }
    if more > 0 {
        head.push_str(&format!("and {more} more overrides (report.json has them all)\n"));
    }
    head.push('\n');
    let (reasons, more) = listed("reasons");
    for r in reasons {
        head.push_str(&format!("- {}\n", line(&r)));
    }
    if more > 0 {
        head.push_str(&format!("- and {more} more reasons (report.json has them all)\n"));
    }
    if let Some(summary) = doc["rollback"]["summary"].as_str() {
        let file = match doc["rollback"]["flagd_file"].as_str() {
            Some(_) => format!(" (as a flagd file: `{}`)", crate::verdict::rollback::FLAGD_FILE),
            None => String::new(),
        };
        head.push_str(&format!("- **rollback:** {}{file}\n", line(summary)));
    }
    if let Some(command) = doc["on_verdict"]["command"].as_array() {
        let words: Vec<String> = command.iter().map(t).collect();
        let status =
            doc["on_verdict"]["exit_code"].as_i64().map_or("did not finish".to_string(), |c| format!("exited {c}"));
        let output = t(&doc["on_verdict"]["output"]);
        let last = output.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        head.push_str(&format!("- on_verdict `{}` {status}: {}\n", code(&clip(&words.join(" "))), line(&clip(last))));
    }
    let (warnings, more) = listed("warnings");
    for w in warnings {
        head.push_str(&format!("- warning: {}\n", line(&w)));
    }
    if more > 0 {
        head.push_str(&format!("- and {more} more warnings (report.json has them all)\n"));
    }

    let assessments = doc["assessments"].as_array().unwrap_or(&none);
    let decisive: Vec<&Value> = assessments
        .iter()
        .filter(|a| {
            a["outcome"] == "inconclusive" || (a["outcome"] == "fail" && a["level"].as_str() == Some("enforce"))
        })
        .collect();
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for e in doc["exposures"].as_array().unwrap_or(&none) {
        let rows = e["steps"]
            .as_array()
            .unwrap_or(&none)
            .iter()
            .map(|step| {
                let failed: Vec<String> = step["failed"].as_array().unwrap_or(&none).iter().map(t).collect();
                format!(
                    "| {} | {} | {} | {} |\n",
                    cell(&t(&step["stage"])),
                    crate::scenario::units::format_share(step["share"].as_f64().unwrap_or(0.0)),
                    t(&step["outcome"]).replace('_', " "),
                    cell(&failed.join("; "))
                )
            })
            .collect();
        sections.push((
            format!(
                "### Exposure `{}` of `{}`\n\n| step | exposed | outcome | failed |\n|---|---|---|---|\n",
                code(&t(&e["stage"])),
                code(&t(&e["flag"]))
            ),
            rows,
        ));
    }
    for m in doc["matrices"].as_array().unwrap_or(&none) {
        let dims: Vec<String> = m["dimensions"].as_array().unwrap_or(&none).iter().map(|d| cell(&t(d))).collect();
        let cells = m["cells"].as_array().unwrap_or(&none);
        let count = |o: &str| cells.iter().filter(|c| c["outcome"] == o).count();
        let rows = cells
            .iter()
            .map(|c| {
                let values: Vec<String> = c["values"].as_array().unwrap_or(&none).iter().map(|v| cell(&t(v))).collect();
                let failed: Vec<String> = c["failed"].as_array().unwrap_or(&none).iter().map(t).collect();
                format!(
                    "| {} | {} | {} |\n",
                    values.join(" | "),
                    t(&c["outcome"]).replace('_', " "),
                    cell(&failed.join("; "))
                )
            })
            .collect();
        sections.push((
            format!(
                "### Matrix `{}` ({}, {} of {} combinations): {} passed, {} failed, {} inconclusive\n\n| {} | outcome | failed |\n|{}---|---|\n",
                code(&t(&m["stage"])),
                t(&m["mode"]),
                cells.len(),
                m["product"].as_u64().unwrap_or(0),
                count("passed"),
                count("failed"),
                count("inconclusive"),
                dims.join(" | "),
                "---|".repeat(dims.len())
            ),
            rows,
        ));
    }
    if !decisive.is_empty() {
        sections.push((
            "### What decided it\n\n| | stage | criterion | measured | limit | samples | why |\n|---|---|---|---|---|---|---|\n"
                .into(),
            decisive
                .iter()
                .map(|a| {
                    format!(
                        "| {} | {} | `{}` | {} | {} | {} | {} |\n",
                        if a["outcome"] == "fail" { "FAIL" } else { "????" },
                        cell(&t(&a["stage"])),
                        code(&super::criterion_label(a)),
                        cell(&t(&a["measured_text"])),
                        cell(&t(&a["limit_text"])),
                        a["samples"].as_u64().map_or("-".into(), |n| n.to_string()),
                        cell(a["note"].as_str().unwrap_or("")),
                    )
                })
                .collect(),
        ));
    }
    let others: Vec<String> = assessments
        .iter()
        .filter(|a| !decisive.iter().any(|d| std::ptr::eq(*d, *a)))
        .map(|a| {
            let mark = match (a["outcome"].as_str(), a["level"].as_str()) {
                (Some("pass"), _) => "pass",
                (_, Some(level)) => level,
                _ => "",
            };
            format!(
                "| {mark} | {} | `{}` | {} | {} |\n",
                cell(&t(&a["stage"])),
                code(&super::criterion_label(a)),
                cell(&t(&a["measured_text"])),
                cell(&t(&a["limit_text"])),
            )
        })
        .collect();
    if !others.is_empty() {
        sections.push((
            "### Other criteria\n\n| | stage | criterion | measured | limit |\n|---|---|---|---|---|\n".into(),
            others,
        ));
    }
    let stages: Vec<String> = doc["stages"]
        .as_array()
        .unwrap_or(&none)
        .iter()
        .map(|st| {
            let m = &st["metrics"];
            let flags = st["flags"]
                .as_object()
                .map(|f| f.iter().map(|(k, v)| format!("{k}={}", flag_text(v))).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            let requests = m["requests"].as_u64().unwrap_or(0);
            let errors = m["errors"].as_u64().unwrap_or(0);
            let rate = if requests > 0 { errors as f64 * 100.0 / requests as f64 } else { 0.0 };
            let health = st["health"]["behind"].as_str().map_or("ok".to_string(), |b| format!("behind: {b}"));
            format!(
                "| {}{} | {} | {} | {} | {} | {rate:.2}% | {} | {} | {} | {} |\n",
                cell(&t(&st["name"])),
                if st["completed"].as_bool().unwrap_or(false) { "" } else { " (cut short)" },
                cell(&flags),
                requests,
                millis(&m["latency"]["p50"]),
                millis(&m["latency"]["p99"]),
                count(&m["data"]["lost"]),
                count(&m["data"]["duplicated"]),
                count(&m["data"]["corrupted"]),
                cell(&health),
            )
        })
        .collect();
    if !stages.is_empty() {
        sections.push((
            "### Stages\n\n| stage | flags | requests | p50 | p99 | errors | lost | duplicated | corrupted | stagegate's health |\n|---|---|---|---|---|---|---|---|---|---|\n"
                .into(),
            stages,
        ));
    }
    // Each flag variant of a split stage (a canary's cohort against the rest).
    let variants: Vec<String> = doc["stages"]
        .as_array()
        .unwrap_or(&none)
        .iter()
        .flat_map(|st| {
            let stage = t(&st["name"]);
            st["metrics"]["variants"].as_object().into_iter().flatten().map(move |(name, v)| {
                let requests = v["requests"].as_u64().unwrap_or(0);
                let errors = v["errors"].as_u64().unwrap_or(0);
                let rate = if requests > 0 { errors as f64 * 100.0 / requests as f64 } else { 0.0 };
                format!(
                    "| {} | {} | {requests} | {} | {} | {rate:.2}% | {} | {} | {} |\n",
                    cell(&stage),
                    cell(name),
                    millis(&v["latency"]["p50"]),
                    millis(&v["latency"]["p99"]),
                    count(&v["data"]["lost"]),
                    count(&v["data"]["duplicated"]),
                    count(&v["data"]["corrupted"]),
                )
            })
        })
        .collect();
    if !variants.is_empty() {
        sections.push((
            "### Flag variants\n\n| stage | variant | requests | p50 | p99 | errors | lost | duplicated | corrupted |\n|---|---|---|---|---|---|---|---|---|\n"
                .into(),
            variants,
        ));
    }
    // What the system under test asked of each flag, stage by stage.
    let evaluations: Vec<String> = doc["stages"]
        .as_array()
        .unwrap_or(&none)
        .iter()
        .flat_map(|st| {
            let stage = t(&st["name"]);
            st["flag_exposure"].as_object().into_iter().flatten().map(move |(flag, e)| {
                let values: Vec<String> = e["by_variant"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(v, x)| {
                        format!(
                            "{v} {} ({:.1}%)",
                            x["evaluations"].as_u64().unwrap_or(0),
                            x["share"].as_f64().unwrap_or(0.0) * 100.0
                        )
                    })
                    .collect();
                format!(
                    "| {} | {} | {} | {} | {} |\n",
                    cell(&stage),
                    cell(flag),
                    cell(&t(&e["how"])),
                    cell(&values.join(", ")),
                    e["bulk_fetches"].as_u64().unwrap_or(0)
                )
            })
        })
        .collect();
    if !evaluations.is_empty() {
        sections.push((
            "### Flag evaluations\n\n| stage | flag | how | by value (share) | bulk fetches |\n|---|---|---|---|---|\n"
                .into(),
            evaluations,
        ));
    }
    // How each split flag's variant compared with the rest, in the same stage.
    let differences: Vec<String> = doc["stages"]
        .as_array()
        .unwrap_or(&none)
        .iter()
        .flat_map(|st| {
            let stage = t(&st["name"]);
            st["variant_differences"].as_array().into_iter().flatten().map(move |d| {
                let diff = |v: &Value| v.as_f64().map_or("-".to_string(), |v| format!("{v:+.1}ms"));
                format!(
                    "| {} | {} | {} vs {} | {} | {} | {:+.2} points | {} vs {} |\n",
                    cell(&stage),
                    cell(&t(&d["flag"])),
                    cell(&t(&d["variant"])),
                    cell(&t(&d["against"])),
                    diff(&d["p50_diff_ms"]),
                    diff(&d["p99_diff_ms"]),
                    d["error_rate_diff"].as_f64().unwrap_or(0.0) * 100.0,
                    d["requests"].as_u64().unwrap_or(0),
                    d["against_requests"].as_u64().unwrap_or(0),
                )
            })
        })
        .collect();
    if !differences.is_empty() {
        sections.push((
            "### Variant against the rest (same stage)\n\n| stage | flag | variants | p50 | p99 | errors | requests |\n|---|---|---|---|---|---|---|\n"
                .into(),
            differences,
        ));
    }
    let failures = doc["failures"].as_array().unwrap_or(&none);
    if failures.len() > 1 {
        sections.push((
            "### Flag changes before each failure\n\n".into(),
            failures.iter().map(|f| format!("- {}\n", line(&t(&f["summary"])))).collect(),
        ));
    }
    let faults: Vec<String> = doc["faults"]
        .as_array()
        .unwrap_or(&none)
        .iter()
        .map(|f| {
            let to = f["ended_secs"].as_f64().map_or("end".to_string(), |s| format!("{s:.1}s"));
            // A fault started live names who started it.
            let kind = match f["by"].as_str() {
                Some(by) => format!("{} (live, by {by})", t(&f["kind"])),
                None => t(&f["kind"]),
            };
            format!(
                "| {} | {} | {} | {:.1}s | {to} | {} |\n",
                cell(&t(&f["stage"])),
                cell(&kind),
                cell(&t(&f["at"])),
                f["started_secs"].as_f64().unwrap_or(0.0),
                if f["removed"].as_bool().unwrap_or(false) { "yes" } else { "**NO**" },
            )
        })
        .collect();
    if !faults.is_empty() {
        sections.push((
            "### Faults\n\n| stage | fault | at | from | to | removed |\n|---|---|---|---|---|---|\n".into(),
            faults,
        ));
    }
    // What operators did through the steering API (allowed or refused).
    let steering: Vec<String> = doc["steering"]
        .as_array()
        .unwrap_or(&none)
        .iter()
        .map(|a| {
            format!(
                "| {:.1}s | {} | {} | {} | {} |\n",
                a["run_secs"].as_f64().unwrap_or(0.0),
                cell(&t(&a["token"])),
                cell(&t(&a["action"])),
                cell(&t(&a["result"])),
                cell(&t(&a["message"])),
            )
        })
        .collect();
    if !steering.is_empty() {
        sections.push((
            "### Steering\n\n| at | token | action | result | what |\n|---|---|---|---|---|\n".into(),
            steering,
        ));
    }
    // A distributed run: each load worker's part of each stage.
    let mut workers = Vec::new();
    for w in doc["distributed"]["workers"].as_array().unwrap_or(&none) {
        for st in w["stages"].as_array().unwrap_or(&none) {
            let p99 = st["p99_ms"].as_f64().map_or("-".to_string(), |v| format!("{v:.1}ms"));
            workers.push(format!(
                "| {} | {} | {:+.1}ms | {} | {} | {} | {} | {} | {} |\n",
                w["index"],
                cell(&t(&w["host"])),
                w["clock_offset_ms"].as_f64().unwrap_or(0.0),
                cell(&t(&st["stage"])),
                st["sent"],
                st["acked"],
                st["failed"],
                p99,
                st["lost"].as_str().map_or("ok".to_string(), |l| format!("**{}**", cell(l))),
            ));
        }
    }
    if !workers.is_empty() {
        sections.push((
            format!(
                "### Load workers\n\n{}| worker | host | clock offset | stage | sent | acked | failed | p99 | share |\n|---|---|---|---|---|---|---|---|---|\n",
                doc["distributed"]["interval_log"]
                    .as_str()
                    .map_or(String::new(), |f| format!("Each worker's latency intervals: `{}`.\n\n", cell(f)))
            ),
            workers,
        ));
    }
    let mut tail = String::new();
    if !files.is_empty() {
        tail.push_str("\n### Files\n\n");
        for (label, path) in files {
            let target = path.replace(" ", "%20").replace("(", "%28").replace(")", "%29");
            tail.push_str(&format!("- [{}]({target})\n", line(label)));
        }
    }
    assemble(head, sections, tail)
}

/// Puts the parts together within [`MAX_BYTES`], leaving out rows from the end of the
/// largest table first and saying how many.
fn assemble(head: String, mut sections: Vec<(String, Vec<String>)>, tail: String) -> String {
    let size = |sections: &[(String, Vec<String>)]| {
        head.len()
            + tail.len()
            + sections.iter().map(|(h, rows)| h.len() + 80 + rows.iter().map(String::len).sum::<usize>()).sum::<usize>()
    };
    let mut dropped = vec![0usize; sections.len()];
    while size(&sections) > MAX_BYTES {
        let Some(i) = (0..sections.len()).max_by_key(|i| sections[*i].1.len()).filter(|i| !sections[*i].1.is_empty())
        else {
            break;
        };
        let cut = sections[i].1.len().div_ceil(10).max(1);
        let keep = sections[i].1.len() - cut;
        sections[i].1.truncate(keep);
        dropped[i] += cut;
    }
    let mut out = head;
    for ((heading, rows), left_out) in sections.into_iter().zip(dropped) {
        out.push('\n');
        out.push_str(&heading);
        for r in rows {
            out.push_str(&r);
        }
        if left_out > 0 {
            out.push_str(&format!(
                "\n{left_out} more row(s) left out to stay within the summary's size; report.json has them all.\n"
            ));
        }
    }
    out.push_str(&tail);
    out
}

/// Text made safe for a table cell: no line breaks, no column breaks.
fn cell(s: &str) -> String {
    line(s).replace('|', "\\|")
}

/// The most reasons, warnings or overrides the head lists, and the longest line of each.
const HEAD_ITEMS: usize = 50;
const HEAD_LINE: usize = 2000;

/// `s` cut to [`HEAD_LINE`] characters, saying so.
fn clip(s: &str) -> String {
    match s.char_indices().nth(HEAD_LINE) {
        Some((at, _)) => format!("{}… (cut; report.json has it all)", &s[..at]),
        None => s.to_string(),
    }
}

/// Text on one line, as text: no control characters, and nothing Markdown or HTML
/// would read as markup (a tag, a link, a code span) from a name in the run.
fn line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '[' | ']' | '*' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '`' => out.push('\''),
            c if super::hidden(c) => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Text inside a code span (shown as it is): on one line, without backticks or pipes
/// that would end the span or the table cell.
fn code(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '`' => '\'',
            '|' => '¦',
            c if super::hidden(c) => ' ',
            c => c,
        })
        .collect()
}

fn millis(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |ms| format!("{ms:.1}ms"))
}

fn count(v: &Value) -> String {
    v.as_u64().map_or("-".into(), |n| n.to_string())
}

/// A flag state as report.json gives it (`{"fixed": V}` or `{"split": {...}}`), as a
/// person reads it: `true`, or `true 10% / false`.
fn flag_text(v: &Value) -> String {
    let plain = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    if let Some(fixed) = v.get("fixed") {
        return plain(fixed);
    }
    if let Some(split) = v.get("split") {
        let parts: Vec<String> = split["variants"]
            .as_array()
            .map(|vs| {
                vs.iter().map(|p| format!("{} {:.0}%", plain(&p[0]), p[1].as_f64().unwrap_or(0.0) * 100.0)).collect()
            })
            .unwrap_or_default();
        return format!("{} / {}", parts.join(" / "), plain(&split["rest"]));
    }
    plain(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(assessments: Value) -> Value {
        json!({
            "scenario": "demo", "file": "s.yaml", "seed": 7, "seed_source": "file",
            "started_at": "a", "finished_at": "b", "verdict": "ROLLBACK", "interrupted": false,
            "reasons": ["latency.p99 < 250ms failed in `candidate`"],
            "stages": [{"name": "candidate", "completed": true, "flags": {"new": {"fixed": true}},
                        "metrics": {"requests": 100, "errors": 2, "latency": {"p50": 3.0, "p99": 412.0},
                                    "data": {"lost": 0, "duplicated": null, "corrupted": 0}},
                        "health": {"behind": null}}],
            "assessments": assessments,
            "faults": [{"stage": "candidate", "kind": "latency", "at": "store", "started_secs": 1.0, "ended_secs": 3.0, "removed": true}]
        })
    }

    #[test]
    fn the_verdict_comes_first_then_what_decided_it() {
        let md = render(
            &doc(json!([
                {"stage": "candidate", "criterion": "latency.p99 < 250ms", "measured_text": "412.0ms", "limit_text": "< 250.0ms", "samples": 100, "outcome": "fail", "level": "enforce"},
                {"stage": "candidate", "criterion": "errors.rate < 5%", "measured_text": "2.00%", "limit_text": "< 5.00%", "samples": 100, "outcome": "pass", "level": "enforce"}
            ])),
            &[("JUnit".into(), "junit.xml".into())],
        );
        assert!(md.starts_with("## ❌ ROLLBACK: `demo`"), "{md}");
        let decided = md.find("### What decided it").unwrap();
        assert!(
            md[decided..].contains("| FAIL | candidate | `latency.p99 < 250ms` | 412.0ms | &lt; 250.0ms | 100 |"),
            "{md}"
        );
        assert!(md.contains("| candidate | new=true | 100 | 3.0ms | 412.0ms | 2.00% | 0 | - | 0 | ok |"), "{md}");
        assert!(md.contains("| candidate | latency | store | 1.0s | 3.0s | yes |"), "{md}");
        assert!(md.contains("- [JUnit](junit.xml)"), "{md}");
    }

    #[test]
    fn a_huge_run_stays_under_the_summary_limit_and_says_what_it_left_out() {
        let many: Vec<Value> = (0..40_000)
            .map(|i| json!({"stage": "candidate", "criterion": format!("latency.p99 < {i}ms"), "measured_text": "1ms", "limit_text": "x", "outcome": "pass", "level": "enforce"}))
            .collect();
        let md = render(&doc(Value::Array(many)), &[]);
        assert!(md.len() <= MAX_BYTES, "{}", md.len());
        assert!(md.contains("more row(s) left out"), "{}", &md[md.len() - 300..]);
    }
}
