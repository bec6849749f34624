//! Environment references in a scenario: `${NAME}`, `${NAME:-default}`, `${secret:NAME}`.
//!
//! A reference is a *value*, never text that the YAML parser reads: [`interpolate`]
//! looks every reference up (reporting an unset one at its line and column) and puts a
//! placeholder in its place, a run of private-use characters as long as the reference,
//! which the parser reads as an ordinary scalar character. After parsing, [`substitute`]
//! replaces each placeholder inside the document's strings by the value. So a value that
//! holds `{`, `: `, `#` or a newline stays one value and can never change the document's
//! structure. A reference that is a whole unquoted scalar takes its value's scalar type
//! (`${SEED}` with `SEED=42` is a number, `${ON}` with `true` a boolean), as if written
//! there; a secret always stays a string. `$${` writes a literal `${`.
//!
//! Not here: masking secrets in output (`crate::secrets`).

use std::path::Path;

use serde_json::Value;

use super::diag::Diagnostic;

/// Opens a placeholder.
const OPEN: char = '\u{E000}';
/// Closes one.
const CLOSE: char = '\u{E001}';
/// Pads one to the length of its reference (so columns stay true).
const PAD: char = '\u{E002}';

/// One reference, looked up.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    pub name: String,
    pub value: String,
    pub secret: bool,
    /// Written inside quotes as the whole scalar (`"${X}"`): a string whatever it holds.
    pub quoted: bool,
    /// Where it is written (1-based line and column).
    pub line: usize,
    pub column: usize,
}

/// The text with placeholders, and what each one stands for.
#[derive(Debug, Default)]
pub struct Interpolated {
    pub text: String,
    pub references: Vec<Reference>,
}

impl Interpolated {
    /// `(name, value)` of every `${secret:NAME}` used.
    pub fn secrets(&self) -> Vec<(String, String)> {
        self.references.iter().filter(|r| r.secret).map(|r| (r.name.clone(), r.value.clone())).collect()
    }
}

fn placeholder(index: usize, width: usize) -> String {
    let mut p = format!("{OPEN}{index}");
    while p.chars().count() + 1 < width {
        p.push(PAD);
    }
    p.push(CLOSE);
    p
}

/// Looks up every `${...}` in `text` with `lookup` (the environment, in production)
/// and puts a placeholder in its place.
pub fn interpolate(
    file: &Path,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Interpolated, Vec<Diagnostic>> {
    let mut out = Interpolated { text: String::with_capacity(text.len()), references: Vec::new() };
    let mut errors = Vec::new();
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        let mut column = 1;
        while let Some(at) = rest.find('$') {
            out.text.push_str(&rest[..at]);
            column += rest[..at].chars().count();
            let before = out.text.chars().last();
            let after = &rest[at..];
            if let Some(tail) = after.strip_prefix("$${") {
                out.text.push_str("${");
                rest = tail;
                column += 3;
                continue;
            }
            let Some(body_start) = after.strip_prefix("${") else {
                out.text.push('$');
                rest = &after[1..];
                column += 1;
                continue;
            };
            let Some(end) = body_start.find('}') else {
                errors.push(error(
                    file,
                    line_no + 1,
                    column,
                    "`${` is not closed by `}`",
                    "write `$${` for a literal `${`",
                ));
                out.text.push_str(after);
                rest = "";
                continue;
            };
            let body = &body_start[..end];
            let consumed = 2 + end + 1;
            let width = after[..consumed].chars().count();
            let (secret, body) = match body.strip_prefix("secret:") {
                Some(name) => (true, name),
                None => (false, body),
            };
            let (name, default) = match body.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (body, None),
            };
            let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if secret && default.is_some() {
                errors.push(error(
                    file,
                    line_no + 1,
                    column,
                    &format!("`${{secret:{body}}}` gives a secret a default"),
                    "a secret takes no default in the file (it would be in the file for all to read); set it in the environment",
                ));
            } else if !valid {
                errors.push(error(
                    file,
                    line_no + 1,
                    column,
                    &format!("`${{{body}}}` is not a variable reference"),
                    "use `${NAME}`, `${NAME:-default}` or `${secret:NAME}`",
                ));
            } else {
                let found = lookup(name);
                let empty = found.as_deref() == Some("");
                match found.filter(|v| !v.is_empty()).or(default.map(String::from)) {
                    Some(value) => {
                        let next = after[consumed..].chars().next();
                        let quoted = matches!((before, next), (Some('"'), Some('"')) | (Some('\''), Some('\'')));
                        out.text.push_str(&placeholder(out.references.len(), width));
                        out.references.push(Reference {
                            name: name.to_string(),
                            value,
                            secret,
                            quoted,
                            line: line_no + 1,
                            column,
                        });
                    }
                    None => errors.push(error(
                        file,
                        line_no + 1,
                        column,
                        &if empty {
                            format!("environment variable `{name}` is set but empty")
                        } else {
                            format!("environment variable `{name}` is not set")
                        },
                        &if secret {
                            format!("set `{name}` in the environment (a secret takes no default in the file)")
                        } else {
                            format!("set it, or give a default: `${{{name}:-value}}`")
                        },
                    )),
                }
            }
            column += width;
            rest = &after[consumed..];
        }
        out.text.push_str(rest);
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// Replaces every placeholder inside `doc`'s strings (and keys) by its value.
pub fn substitute(doc: &mut Value, references: &[Reference]) {
    if references.is_empty() {
        return;
    }
    match doc {
        Value::String(s) if s.contains(OPEN) => {
            if let Some(r) = whole(s, references) {
                *doc = typed(r);
            } else {
                *s = replace_all(s, references);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| substitute(v, references)),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (k, mut v) in entries {
                substitute(&mut v, references);
                let k = if k.contains(OPEN) { replace_all(&k, references) } else { k };
                map.insert(k, v);
            }
        }
        _ => {}
    }
}

/// The reference a string is made of entirely, if it is one placeholder.
fn whole<'a>(s: &str, references: &'a [Reference]) -> Option<&'a Reference> {
    let inner = s.strip_prefix(OPEN)?.strip_suffix(CLOSE)?;
    let digits = inner.trim_end_matches(PAD);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    references.get(digits.parse::<usize>().ok()?)
}

/// A whole-scalar reference's value, typed as if it had been written there: a number,
/// a boolean or null when it reads as one; otherwise (and always for a secret, or when
/// quoted) a string.
fn typed(r: &Reference) -> Value {
    if r.secret || r.quoted {
        return Value::String(r.value.clone());
    }
    match serde_yaml::from_str::<Value>(&r.value) {
        // `.nan` or `.inf` would read as null: they stay text (and are refused where a
        // number belongs).
        Ok(Value::Null) if !matches!(r.value.trim(), "null" | "Null" | "NULL" | "~") => Value::String(r.value.clone()),
        Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::Null)) if !r.value.trim().is_empty() => v,
        _ => Value::String(r.value.clone()),
    }
}

fn replace_all(s: &str, references: &[Reference]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let tail = &rest[at + OPEN.len_utf8()..];
        let Some(end) = tail.find(CLOSE) else {
            out.push_str(&rest[at..]);
            return out;
        };
        let digits = tail[..end].trim_end_matches(PAD);
        match digits.parse::<usize>().ok().and_then(|i| references.get(i)) {
            Some(r) => out.push_str(&r.value),
            None => out.push_str(&rest[at..at + OPEN.len_utf8() + end + CLOSE.len_utf8()]),
        }
        rest = &tail[end + CLOSE.len_utf8()..];
    }
    out.push_str(rest);
    out
}

fn error(file: &Path, line: usize, column: usize, message: &str, hint: &str) -> Diagnostic {
    Diagnostic {
        file: file.to_path_buf(),
        line,
        column,
        path: String::new(),
        message: message.to_string(),
        hint: Some(hint.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(name: &str) -> Option<String> {
        match name {
            "RATE" => Some("300/s".into()),
            "TOKEN" => Some("hunter2".into()),
            "EMPTY" => Some(String::new()),
            "SEED" => Some("42".into()),
            "ON" => Some("true".into()),
            "NASTY" => Some("x\nversion: 2\nstages: []  # {".into()),
            _ => None,
        }
    }

    fn load(text: &str) -> (Value, Interpolated) {
        let i = interpolate(Path::new("s.yaml"), text, &env).unwrap();
        let mut doc: Value = serde_yaml::from_str(&i.text).unwrap();
        substitute(&mut doc, &i.references);
        (doc, i)
    }

    #[test]
    fn replaces_defaults_and_secrets() {
        let text =
            "rate: ${RATE}\nwarmup: ${WARM:-2s}\nx: ${EMPTY:-d}\nauth: Bearer ${secret:TOKEN}\nlit: $${HOME} $5\n";
        let (doc, i) = load(text);
        assert_eq!(
            doc,
            json!({"rate": "300/s", "warmup": "2s", "x": "d", "auth": "Bearer hunter2", "lit": "${HOME} $5"})
        );
        assert_eq!(i.secrets(), vec![("TOKEN".to_string(), "hunter2".to_string())]);
    }

    #[test]
    fn a_whole_scalar_takes_its_values_type_unless_secret_or_quoted() {
        let (doc, _) =
            load("seed: ${SEED}\non: ${ON}\nq: \"${SEED}\"\ns: ${secret:ON}\nflow: { a: ${SEED}, b: [${ON}] }\n");
        assert_eq!(doc, json!({"seed": 42, "on": true, "q": "42", "s": "true", "flow": {"a": 42, "b": [true]}}));
    }

    /// Regression: a value was pasted into the text before parsing, so a value holding
    /// YAML could rewrite the scenario.
    #[test]
    fn a_value_can_never_change_the_documents_structure() {
        let (doc, _) = load("version: 1\nname: ${NASTY}\n");
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["name"], "x\nversion: 2\nstages: []  # {");
        assert!(doc.get("stages").is_none());
    }

    #[test]
    fn unset_variables_are_located_and_columns_stay_true() {
        let err = interpolate(Path::new("s.yaml"), "a: 1\nb: x ${MISSING}\n", &env).unwrap_err();
        assert_eq!((err[0].line, err[0].column), (2, 6));
        assert!(err[0].message.contains("`MISSING`"));
        let i = interpolate(Path::new("s.yaml"), "a: ${SEED} b\n", &env).unwrap();
        assert_eq!(i.text.chars().count(), "a: ${SEED} b\n".chars().count());
    }

    #[test]
    fn a_secret_takes_no_default() {
        let err = interpolate(Path::new("s.yaml"), "auth: ${secret:TOKEN:-letmein}\n", &env).unwrap_err();
        assert!(err[0].message.contains("gives a secret a default"), "{}", err[0].message);
    }
}
