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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Secrets {
    pairs: Vec<(String, String)>,
    /// Per secret: its mark (`${secret:NAME}`) and every form its value takes, worked
    /// out once (logs are masked line by line).
    masks: Vec<(String, Vec<String>)>,
}

impl Secrets {
    /// Secrets from `(name, value)` pairs; empty values are never masked.
    pub fn new(pairs: Vec<(String, String)>) -> Secrets {
        let mut pairs: Vec<(String, String)> = pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        // Longer values first, so a secret inside another is not half-masked.
        pairs.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
        pairs.dedup();
        let masks = pairs.iter().map(|(name, value)| (format!("${{secret:{name}}}"), forms(value))).collect();
        Secrets { pairs, masks }
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
        let mut out = text.to_string();
        for (mark, forms) in &self.masks {
            for form in forms {
                out = replace_ignoring_ascii_case(&out, form, mark);
            }
        }
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

/// `text` with every occurrence of `what`, in any ASCII letter case, replaced by `with`.
fn replace_ignoring_ascii_case(text: &str, what: &str, with: &str) -> String {
    let (hay, needle) = (text.to_ascii_lowercase(), what.to_ascii_lowercase());
    if needle.is_empty() || !hay.contains(&needle) {
        return text.to_string();
    }
    // Lower-casing ASCII keeps every byte where it was, so positions carry over.
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    while let Some(at) = hay[from..].find(&needle) {
        let start = from + at;
        out.push_str(&text[from..start]);
        out.push_str(with);
        from = start + needle.len();
    }
    out.push_str(&text[from..]);
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
