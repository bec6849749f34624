//! Diagnostics: what a user is told about a bad scenario or data schema.
//!
//! A [`Diagnostic`] names the file, line and column, the key path inside the document
//! (`stages[1].faults[0].at`), what is wrong and, when we can tell, a hint. Loading
//! gathers every diagnostic it can before giving up, so [`Diagnostics`] is a list.
//! Rendering to the terminal is `main`'s job; this file only formats.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// One thing wrong with an input file, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    /// The file the problem is in, as the user named it.
    pub file: PathBuf,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// Key path inside the document, e.g. `stages[1].faults[0].at`; empty for the whole file.
    pub path: String,
    /// What is wrong, in one sentence.
    pub message: String,
    /// How to fix it, when we can tell.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// Adds a hint to the diagnostic.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// `text` with control characters (a terminal escape sequence, a tab, a carriage
/// return from a scenario value) written as `\u{..}`, so a message cannot drive the
/// terminal it is printed on.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if crate::report::hidden(c) { format!("\\u{{{:x}}}", c as u32) } else { c.to_string() })
        .collect()
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if self.path.is_empty() {
            write!(f, ": {}", printable(&self.message))?;
        } else {
            write!(f, ": `{}`: {}", printable(&self.path), printable(&self.message))?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {}", printable(hint))?;
        }
        Ok(())
    }
}

/// Every problem found in one load, in file order.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Sorts by file, line and column so that the report reads top to bottom.
    pub fn sorted(mut self) -> Self {
        self.0.sort_by(|a, b| (&a.file, a.line, a.column, &a.path).cmp(&(&b.file, b.line, b.column, &b.path)));
        self.0.dedup();
        self
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Suggests the valid name nearest to `wrong`, if one is close enough to be a typo.
pub fn nearest<'a>(wrong: &str, valid: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    valid
        .into_iter()
        .map(|v| (strsim::damerau_levenshtein(wrong, v), v))
        .filter(|(distance, v)| *distance <= 2.max(v.len() / 3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_finds_typos_only() {
        let keys = ["duration", "warmup", "arrival", "data"];
        assert_eq!(nearest("duraton", keys), Some("duration"));
        assert_eq!(nearest("warmpu", keys), Some("warmup"));
        assert_eq!(nearest("colour", keys), None);
    }

    #[test]
    fn renders_file_line_column_and_path() {
        let d = Diagnostic {
            file: "s.yaml".into(),
            line: 3,
            column: 5,
            path: "workload.duration".into(),
            message: "bad".into(),
            hint: Some("fix it".into()),
        };
        assert_eq!(d.to_string(), "s.yaml:3:5: `workload.duration`: bad\n  hint: fix it");
    }
}
