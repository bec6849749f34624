//! Secrets: the values of a scenario's `${secret:NAME}` references, masked everywhere
//! stagegate writes: the terminal, the plan, diagnostics, its logs, the reports.
//!
//! [`Secrets::mask`] masks text (every occurrence of a value, raw or JSON-escaped,
//! becomes `${secret:NAME}`); [`Secrets::mask_json`] masks a JSON document value by
//! value, so the document stays valid JSON whatever the secret is (`true`, `"`, `e`).
//! [`install_for_logs`] hands the secrets to the log writer ([`LogWriter`]), which masks
//! every log line before it reaches stderr.
//!
//! Not here: reading the references (`scenario::interpolate`, which keeps a value a
//! value: it can never change a scenario's structure).

use std::sync::RwLock;

use serde_json::Value;

/// The shortest secret value stagegate accepts: every occurrence of a secret is masked,
/// and a shorter one would mask ordinary words and numbers.
pub const MIN_LEN: usize = 4;

/// The secret values of one scenario, by name.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pairs: Vec<(String, String)>,
    /// Every form of every secret's value, found in one pass (a mark put in is never
    /// searched again), the longest at each place, whatever its ASCII letter case;
    /// worked out once (logs are masked line by line).
    finder: Option<aho_corasick::AhoCorasick>,
    /// The mark (`${secret:NAME}`) of each of the finder's patterns.
    marks: Vec<String>,
}

impl PartialEq for Secrets {
    fn eq(&self, other: &Secrets) -> bool {
        self.pairs == other.pairs
    }
}

impl Secrets {
    /// Secrets from `(name, value)` pairs; empty values are never masked.
    pub fn new(pairs: Vec<(String, String)>) -> Secrets {
        let mut pairs: Vec<(String, String)> = pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        // Longer values first, so a secret inside another is not half-masked.
        pairs.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
        pairs.dedup();
        let mut patterns = Vec::new();
        let mut marks = Vec::new();
        for (name, value) in &pairs {
            for form in forms(value) {
                patterns.push(form);
                marks.push(format!("${{secret:{name}}}"));
            }
        }
        let finder = (!patterns.is_empty())
            .then(|| {
                aho_corasick::AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .ok()
            })
            .flatten();
        Secrets { pairs, finder, marks }
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// `(name, value)` of each secret.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// `text` with every secret value replaced by `${secret:NAME}`, in every form it
    /// takes in stagegate's output: raw, escaped as inside a JSON string or a Rust debug
    /// string, percent-encoded as any part of a URL encodes it, and whatever its ASCII
    /// letter case (a URL's host is lower-cased, an HTTP method upper-cased).
    pub fn mask(&self, text: &str) -> String {
        let Some(finder) = &self.finder else { return text.to_string() };
        let mut out = String::with_capacity(text.len());
        let mut from = 0;
        for m in finder.find_iter(text) {
            out.push_str(&text[from..m.start()]);
            out.push_str(&self.marks[m.pattern().as_usize()]);
            from = m.end();
        }
        out.push_str(&text[from..]);
        out
    }

    /// Masks every string (and object key) inside `value`, in place.
    pub fn mask_json(&self, value: &mut Value) {
        if self.is_empty() {
            return;
        }
        match value {
            Value::String(s) => {
                let masked = self.mask(s);
                if masked != *s {
                    *s = masked;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.mask_json(v)),
            Value::Object(map) => {
                let entries = std::mem::take(map);
                for (k, mut v) in entries {
                    self.mask_json(&mut v);
                    map.insert(self.mask(&k), v);
                }
            }
            _ => {}
        }
    }
}

/// Every form `value` takes in output: raw, JSON- and debug-escaped, and percent-encoded
/// as a URL's fragment, query, path, user info or component encodes it (the WHATWG URL
/// sets), fully, and as a form field.
fn forms(value: &str) -> Vec<String> {
    use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};
    const FRAGMENT: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'<').add(b'>').add(b'`');
    const QUERY: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'<').add(b'>');
    const PATH: &AsciiSet = &QUERY.add(b'?').add(b'`').add(b'{').add(b'}');
    const USERINFO: &AsciiSet =
        &PATH.add(b'/').add(b':').add(b';').add(b'=').add(b'@').add(b'[').add(b'\\').add(b']').add(b'^').add(b'|');
    const COMPONENT: &AsciiSet = &USERINFO.add(b'$').add(b'%').add(b'&').add(b'+').add(b',');
    let quoted = |s: String| s.get(1..s.len().saturating_sub(1)).unwrap_or_default().to_string();
    let mut out =
        vec![value.to_string(), quoted(serde_json::to_string(value).unwrap_or_default()), quoted(format!("{value:?}"))];
    for set in [FRAGMENT, QUERY, PATH, USERINFO, COMPONENT, NON_ALPHANUMERIC] {
        out.push(utf8_percent_encode(value, set).to_string());
    }
    out.push(utf8_percent_encode(value, NON_ALPHANUMERIC).to_string().replace("%20", "+"));
    // RFC 3986's unreserved characters left as they are, with and without `/` (as
    // Python's `quote` and JavaScript's `encodeURIComponent` do), and every byte encoded.
    const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    out.push(utf8_percent_encode(value, UNRESERVED).to_string());
    const UNRESERVED_PATH: &AsciiSet = &UNRESERVED.remove(b'/');
    out.push(utf8_percent_encode(value, UNRESERVED_PATH).to_string());
    out.push(value.bytes().map(|b| format!("%{b:02X}")).collect());
    // JSON as other writers escape it: non-ASCII as `\uXXXX` (Python's default), `<`,
    // `>` and `&` too (Go's), every character, and a JSON string inside another.
    let json = quoted(serde_json::to_string(value).unwrap_or_default());
    out.push(json_ascii(value, false));
    out.push(json_ascii(value, true));
    out.push(value.encode_utf16().map(|u| format!("\\u{u:04x}")).collect());
    out.push(quoted(serde_json::to_string(&json).unwrap_or_default()));
    // Backslashes doubled and nothing else (a Python `repr`, a shell's quoting).
    out.push(value.replace('\\', "\\\\"));
    // Letter case beyond ASCII (ASCII case is ignored when matching anyway).
    out.push(value.to_uppercase());
    out.push(value.to_lowercase());
    let mut unique = Vec::new();
    for f in out {
        if !f.is_empty() && !unique.contains(&f) {
            unique.push(f);
        }
    }
    // Longer forms first, so a form inside another is not half-masked.
    unique.sort_by_key(|f| std::cmp::Reverse(f.len()));
    unique
}

/// `value` as a JSON string's inside with every non-ASCII character as `\uXXXX`, and
/// with `html` also `<`, `>` and `&`.
fn json_ascii(value: &str, html: bool) -> String {
    let escaped = serde_json::to_string(value).unwrap_or_default();
    let inner = escaped.get(1..escaped.len().saturating_sub(1)).unwrap_or_default();
    let mut out = String::with_capacity(inner.len());
    for c in inner.chars() {
        if !c.is_ascii() || (html && matches!(c, '<' | '>' | '&')) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

static FOR_LOGS: RwLock<Option<Secrets>> = RwLock::new(None);

/// Makes every log line from now on mask `secrets`.
pub fn install_for_logs(secrets: &Secrets) {
    *FOR_LOGS.write().unwrap_or_else(|p| p.into_inner()) = Some(secrets.clone());
}

/// The log writer: stderr, with the installed secrets masked in every line.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let masked = match &*FOR_LOGS.read().unwrap_or_else(|p| p.into_inner()) {
            Some(s) if !s.is_empty() => s.mask(&String::from_utf8_lossy(buf)),
            _ => return std::io::stderr().write(buf),
        };
        // A closed stderr must not fail the run.
        let _ = std::io::stderr().write_all(masked.as_bytes());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_masks_raw_and_escaped_forms() {
        let s = Secrets::new(vec![("T".into(), "hun\"ter2".into())]);
        assert_eq!(s.mask("Bearer hun\"ter2"), "Bearer ${secret:T}");
        assert_eq!(s.mask(r#"{"auth":"hun\"ter2"}"#), r#"{"auth":"${secret:T}"}"#);
        assert_eq!(s.mask("http://u:hun%22ter2@host/"), "http://u:${secret:T}@host/");
        assert_eq!(s.mask(r#"invalid type: string "hun\"ter2""#), r#"invalid type: string "${secret:T}""#);
    }

    #[test]
    fn url_encodings_and_letter_case_are_masked_too() {
        let s = Secrets::new(vec![("Q".into(), "q t!x".into()), ("H".into(), "SeCrEtHoSt".into())]);
        assert_eq!(s.mask("http://127.0.0.1:1/q%20t!x/orders"), "http://127.0.0.1:1/${secret:Q}/orders");
        assert_eq!(s.mask("?k=q+t%21x"), "?k=${secret:Q}");
        assert_eq!(s.mask("connecting to secrethost.invalid"), "connecting to ${secret:H}.invalid");
        assert_eq!(s.mask("unknown HTTP method SECRETHOST"), "unknown HTTP method ${secret:H}");
    }

    /// Regression: masking the report's text turned a secret `true` into
    /// `${secret:FLAG}` where JSON needs a literal, and the report stopped being JSON.
    /// Regression: an attacker's trial found these forms unmasked in a target's log.
    #[test]
    fn other_writers_escapes_and_encodings_are_masked_too() {
        let s = Secrets::new(vec![("A".into(), "Pa&ss<\u{e9}>Word9".into()), ("B".into(), "Ab\"c\\d/e f%g+h".into())]);
        for leaked in [
            "Pa&ss<\\u00e9>Word9",                        // Python's json.dumps
            "Pa\\u0026ss\\u003c\\u00e9\\u003eWord9",      // Go's encoding/json
            "PA&SS<\u{c9}>WORD9",                         // upper case beyond ASCII
            "Ab%22c%5Cd/e%20f%25g%2Bh",                   // a path, `/` kept
            "%41%62%22%63%5C%64%2F%65%20%66%25%67%2B%68", // every byte
            "\\\"Ab\\\\\\\"c\\\\\\\\d/e f%g+h\\\"",       // JSON inside JSON
            "'Ab\"c\\\\d/e f%g+h'",                       // Python's repr
        ] {
            let masked = s.mask(&format!("x {leaked} y"));
            assert!(masked.contains("${secret:"), "not masked: {leaked} -> {masked}");
            assert!(!masked.contains("Word9") && !masked.contains("f%g") && !masked.contains("%66%25"), "{masked}");
        }
    }

    #[test]
    fn a_json_document_stays_json_whatever_the_secret() {
        for secret in ["true", "e", "\"", "1", "{"] {
            let s = Secrets::new(vec![("X".into(), secret.into())]);
            let mut doc = json!({"ok": true, "n": 1, "txt": format!("a {secret} b"), "list": [secret]});
            s.mask_json(&mut doc);
            let text = serde_json::to_string(&doc).unwrap();
            let back: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back["ok"], true, "{secret}: a literal was masked");
            assert!(!back["txt"].as_str().unwrap().contains(&format!(" {secret} ")), "{secret}: left unmasked");
        }
    }
}
