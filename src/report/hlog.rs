//! The HdrHistogram interval log (`--report hlog`): each stage's judged latency (and
//! each flag variant's) as one interval of the standard log format, tagged with the
//! stage's name (`candidate`, `candidate/new-enricher=true`), in microseconds.
//!
//! `HistogramLogProcessor`, the `hdrhistogram` crate's `IntervalLogIterator` and other
//! HdrHistogram tools read it, and the logs of several runs can be merged by tag. The
//! histograms are those the report's percentiles come from, so the log gives the same
//! figures. Rendered from the report document, like every file format.

use std::time::{Duration, SystemTime};

use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use serde_json::Value;

/// The interval log of the run `doc` describes.
pub fn render(doc: &Value) -> Result<String, String> {
    let time = |v: &Value| v.as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let run_start = time(&doc["started_at"]).ok_or("the report has no start time")?;
    let none = Vec::new();
    let mut out = Vec::new();
    {
        let mut serializer = V2DeflateSerializer::new();
        let mut builder = IntervalLogWriterBuilder::new();
        builder
            .add_comment(&one_line(&format!(
                "stagegate {} interval log",
                doc["stagegate_version"].as_str().unwrap_or("")
            )))
            .add_comment(&one_line(&format!(
                "scenario {}, seed {}",
                doc["scenario"].as_str().unwrap_or(""),
                doc["seed"]
            )))
            .add_comment("latency of judged requests in microseconds, one interval per stage and flag variant")
            .with_start_time(SystemTime::from(run_start))
            .with_base_time(SystemTime::from(run_start))
            .with_max_value_divisor(1000.0);
        let mut log = builder.begin_log_with(&mut out, &mut serializer).map_err(|e| e.to_string())?;
        for st in doc["stages"].as_array().unwrap_or(&none) {
            let name = st["name"].as_str().unwrap_or("stage");
            let start =
                time(&st["started_at"]).map_or(Duration::ZERO, |t| (t - run_start).to_std().unwrap_or(Duration::ZERO));
            // The judged time: from the end of warm-up to the last window's end.
            let windows = st["windows"].as_array();
            let first = windows.and_then(|w| w.first()).and_then(|w| w["from_secs"].as_f64()).unwrap_or(0.0);
            let last = windows.and_then(|w| w.last()).and_then(|w| w["from_secs"].as_f64()).unwrap_or(first);
            let n = windows.map_or(1, Vec::len).max(1) as f64;
            let span = if n > 1.0 { (last - first) * n / (n - 1.0) } else { 1.0 };
            for h in st["histograms"].as_array().unwrap_or(&none) {
                let tag = match h["variant"].as_str() {
                    Some(v) => format!("{name}/{v}"),
                    None => name.to_string(),
                };
                let tag: String = tag
                    .chars()
                    .map(|c| if c == ',' || c.is_whitespace() || super::hidden(c) { '_' } else { c })
                    .collect();
                let histogram = decode(h["encoded"].as_str().unwrap_or_default())
                    .map_err(|e| format!("stage `{name}`: a histogram cannot be read: {e}"))?;
                log.write_histogram(
                    &histogram,
                    start + Duration::try_from_secs_f64(first.max(0.0)).unwrap_or(Duration::ZERO),
                    Duration::try_from_secs_f64(span.max(0.001)).unwrap_or(Duration::from_millis(1)),
                    Tag::new(&tag),
                )
                .map_err(|e| format!("{e:?}"))?;
            }
        }
    }
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// A histogram from report.json's encoding (base64 of the compressed V2 format).
pub fn decode(encoded: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|e| e.to_string())?;
    check_header(&bytes)?;
    Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| format!("{e:?}"))
}

/// The V2 encoding's cookies (with the word-size bits HdrHistogram sets): plain, and
/// deflated.
const V2: u32 = 0x1c84_9303 | 0x10;
const V2_DEFLATE: u32 = 0x1c84_9304 | 0x10;

/// Refuses a histogram whose header asks for more than stagegate's own ever hold (3
/// significant digits, up to an hour in microseconds, a payload of at most 1 MiB): a
/// crafted header would otherwise cost its reader up to gigabytes.
fn check_header(bytes: &[u8]) -> Result<(), String> {
    use std::io::Read;
    let word = |b: &[u8], at: usize| b.get(at..at + 4).map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    let header: Vec<u8> = match word(bytes, 0) {
        Some(V2) => bytes.iter().take(40).copied().collect(),
        Some(V2_DEFLATE) => {
            let mut out = Vec::with_capacity(40);
            let zipped = bytes.get(8..).unwrap_or_default();
            flate2::read::ZlibDecoder::new(zipped).take(40).read_to_end(&mut out).map_err(|e| e.to_string())?;
            out
        }
        _ => return Err("not an HdrHistogram V2 encoding".into()),
    };
    if header.len() < 40 || word(&header, 0) != Some(V2) {
        return Err("a truncated HdrHistogram header".into());
    }
    let long = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
    let (payload, digits, lowest, highest) =
        (word(&header, 4).unwrap_or(u32::MAX), word(&header, 12).unwrap_or(u32::MAX), long(16), long(24));
    if payload > 1 << 20 || digits > 3 || lowest == 0 || highest > 36_000_000_000 {
        return Err(format!(
            "a histogram beyond stagegate's own (payload {payload} bytes, {digits} digits, values {lowest} to {highest})"
        ));
    }
    Ok(())
}

/// `text` on one line: a comment in the log may not start another.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if super::hidden(c) { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
    use serde_json::json;

    fn encoded(values: &[u64]) -> String {
        let mut h = crate::measure::new_histogram();
        for v in values {
            h.record(*v).unwrap();
        }
        let mut bytes = Vec::new();
        V2DeflateSerializer::new().serialize(&h, &mut bytes).unwrap();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn a_log_reads_back_by_tag_with_the_same_percentiles() {
        let base: Vec<u64> = (1..=1000).map(|i| i * 10).collect();
        let doc = json!({
            "started_at": "2026-12-01T10:00:00+00:00", "scenario": "demo", "seed": 1,
            "stages": [{"name": "baseline", "started_at": "2026-12-01T10:00:02+00:00",
                        "windows": [{"from_secs": 1.0}, {"from_secs": 2.0}],
                        "histograms": [{"variant": null, "encoded": encoded(&base)},
                                       {"variant": "a=1,b=2", "encoded": encoded(&[5000])}]}]
        });
        let log = render(&doc).unwrap();
        let entries: Vec<_> = IntervalLogIterator::new(log.as_bytes())
            .filter_map(|e| match e.unwrap() {
                LogEntry::Interval(i) => Some(i),
                _ => None,
            })
            .collect();
        assert_eq!(entries.len(), 2, "{log}");
        assert_eq!(entries[0].tag().unwrap().as_str(), "baseline");
        assert_eq!(entries[1].tag().unwrap().as_str(), "baseline/a=1_b=2");
        assert_eq!(entries[0].start_timestamp(), Duration::from_secs(3));
        let h = decode(entries[0].encoded_histogram()).unwrap();
        assert_eq!(h.len(), 1000);
        assert_eq!(h.value_at_quantile(0.99), decode(&encoded(&base)).unwrap().value_at_quantile(0.99));
    }
}
