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
pub struct Secrets(Vec<(String, String)>);

impl Secrets {
    /// Secrets from `(name, value)` pairs; empty values are never masked.
    pub fn new(pairs: Vec<(String, String)>) -> Secrets {
        let mut pairs: Vec<(String, String)> = pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        // Longer values first, so a secret inside another is not half-masked.
        pairs.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
        pairs.dedup();
        Secrets(pairs)
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(name, value)` of each secret.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// `text` with every secret value replaced by `${secret:NAME}`: raw, escaped as
    /// inside a JSON string, or percent-encoded as inside a URL.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (name, value) in &self.0 {
            let mark = format!("${{secret:{name}}}");
            out = out.replace(value, &mark);
            let escaped = serde_json::to_string(value).unwrap_or_default();
            let escaped = &escaped[1..escaped.len().saturating_sub(1).max(1)];
            for form in [escaped, &percent_encoded(value)] {
                if form != value && !form.is_empty() {
                    out = out.replace(form, &mark);
                }
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

/// `value` as a URL carries it: every byte but letters, digits and `-._~` as `%XX`.
fn percent_encoded(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
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
