//! Environment interpolation of a scenario's text, before it is parsed.
//!
//! `${NAME}` is replaced by the variable's value, `${NAME:-default}` falls back to the
//! default when the variable is unset or empty, `${secret:NAME}` is replaced like
//! `${NAME}` but its value is remembered so that reports and logs can mask it, and
//! `$${` writes a literal `${`. A variable that is unset with no default is an error
//! at its line and column.

use std::path::Path;

use super::diag::Diagnostic;

/// The interpolated text and the secret values it now contains.
#[derive(Debug, Default)]
pub struct Interpolated {
    pub text: String,
    /// `(name, value)` of every `${secret:NAME}` used.
    pub secrets: Vec<(String, String)>,
}

/// Replaces every `${...}` in `text` using `lookup` (the environment, in production).
pub fn interpolate(
    file: &Path,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Interpolated, Vec<Diagnostic>> {
    let mut out = Interpolated { text: String::with_capacity(text.len()), secrets: Vec::new() };
    let mut errors = Vec::new();
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        let mut column = 1;
        while let Some(at) = rest.find('$') {
            out.text.push_str(&rest[..at]);
            column += rest[..at].chars().count();
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
            let (secret, body) = match body.strip_prefix("secret:") {
                Some(name) => (true, name),
                None => (false, body),
            };
            let (name, default) = match body.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (body, None),
            };
            let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                errors.push(error(
                    file,
                    line_no + 1,
                    column,
                    &format!("`${{{body}}}` is not a variable reference"),
                    "use `${NAME}`, `${NAME:-default}` or `${secret:NAME}`",
                ));
            } else {
                match lookup(name).filter(|v| !v.is_empty()).or(default.map(String::from)) {
                    Some(value) => {
                        if secret {
                            out.secrets.push((name.to_string(), value.clone()));
                        }
                        out.text.push_str(&value);
                    }
                    None => errors.push(error(
                        file,
                        line_no + 1,
                        column,
                        &format!("environment variable `{name}` is not set"),
                        &if secret {
                            format!("set `{name}` in the environment (a secret takes no default in the file)")
                        } else {
                            format!("set it, or give a default: `${{{name}:-value}}`")
                        },
                    )),
                }
            }
            let consumed = 2 + end + 1;
            column += after[..consumed].chars().count();
            rest = &after[consumed..];
        }
        out.text.push_str(rest);
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
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

/// Replaces every secret value in `text` by `${secret:NAME}`.
pub fn mask(text: &str, secrets: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (name, value) in secrets {
        if !value.is_empty() {
            out = out.replace(value, &format!("${{secret:{name}}}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "RATE" => Some("300/s".into()),
            "TOKEN" => Some("hunter2".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_defaults_and_secrets() {
        let text =
            "rate: ${RATE}\nwarmup: ${WARM:-2s}\nx: ${EMPTY:-d}\nauth: Bearer ${secret:TOKEN}\nlit: $${HOME} $5\n";
        let out = interpolate(Path::new("s.yaml"), text, &env).unwrap();
        assert_eq!(out.text, "rate: 300/s\nwarmup: 2s\nx: d\nauth: Bearer hunter2\nlit: ${HOME} $5\n");
        assert_eq!(out.secrets, vec![("TOKEN".to_string(), "hunter2".to_string())]);
        assert_eq!(mask("sent Bearer hunter2", &out.secrets), "sent Bearer ${secret:TOKEN}");
    }

    #[test]
    fn unset_variables_are_located() {
        let err = interpolate(Path::new("s.yaml"), "a: 1\nb: x ${MISSING}\n", &env).unwrap_err();
        assert_eq!((err[0].line, err[0].column), (2, 6));
        assert!(err[0].message.contains("`MISSING`"));
    }
}
