//! The only place that reads YAML: typed deserialisation plus a map from key paths to
//! line and column.
//!
//! `serde_yaml` turns text into the raw `*Spec` types; `yaml-rust2`'s event parser, run
//! over the same text, records where each key and value sits, so that errors found later
//! (a fault `at` an unknown dependency, say) can still point at a line. No YAML type
//! leaves this module: callers get their own types and a [`Locations`] index.

use std::collections::HashMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::diag::{Diagnostic, Diagnostics, nearest};

/// Line and column (both 1-based) of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Pos {
    fn from(m: Marker) -> Self {
        Pos { line: m.line(), column: m.col() + 1 }
    }
}

/// Where each key path of one document sits in its file.
#[derive(Debug, Clone, Default)]
pub struct Locations {
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
}

impl Locations {
    /// Position of the value at `path`, or of its nearest ancestor that exists.
    pub fn value(&self, path: &str) -> Pos {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.values.get(&p) {
                return *pos;
            }
            match parent(&p) {
                Some(up) => p = up,
                None => return self.values.get("").copied().unwrap_or_default(),
            }
        }
    }

    /// Whether the document has a key or item at `path`.
    pub fn has_key(&self, path: &str) -> bool {
        self.keys.contains_key(path) || self.values.contains_key(path)
    }

    /// Position of the key at `path` (falls back to its value, then its ancestors).
    pub fn key(&self, path: &str) -> Pos {
        self.keys.get(path).copied().unwrap_or_else(|| self.value(path))
    }
}

/// The parent of a rendered key path: `a.b[2]` -> `a.b`, `a.b` -> `a`, `a` -> ``.
fn parent(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(path[..cut].to_string())
}

/// Appends a map key to a rendered path.
pub fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// Appends a sequence index to a rendered path.
pub fn join_index(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Indexer {
    stack: Vec<Frame>,
    locations: Locations,
    /// Keys written twice in one map: (key path, where first, where again). YAML says a
    /// key is unique; a parser that keeps the last one silently would drop the first
    /// (a whole `criteria` list, say).
    duplicates: Vec<(String, Pos, Pos)>,
    /// Values written as `.inf` or `.nan`: YAML numbers that no setting can hold (a
    /// reader would turn them into null, "not given", and a default would quietly apply).
    non_finite: Vec<(String, Pos)>,
}

/// Whether a plain scalar is YAML's infinity or not-a-number.
fn is_non_finite(text: &str) -> bool {
    let t = text.strip_prefix(['-', '+']).unwrap_or(text);
    matches!(t, ".inf" | ".Inf" | ".INF") || matches!(text, ".nan" | ".NaN" | ".NAN")
}

impl Indexer {
    /// Decides the path of the node that starts now; `None` when the node is a map key.
    fn place(&mut self, event: &Event, pos: Pos) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = join_index(path, *next);
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(join_key(path, &k)),
                None => {
                    let name = match event {
                        Event::Scalar(text, ..) => text.clone(),
                        _ => "?".to_string(),
                    };
                    let full = join_key(path, &name);
                    match self.locations.keys.get(&full) {
                        Some(first) if matches!(event, Event::Scalar(..)) => self.duplicates.push((full, *first, pos)),
                        _ => {
                            self.locations.keys.insert(full, pos);
                        }
                    }
                    *key = Some(name);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Indexer {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let pos = Pos::from(mark);
        match &event {
            Event::Scalar(..) | Event::Alias(..) => {
                if let Some(path) = self.place(&event, pos) {
                    if let Event::Scalar(text, TScalarStyle::Plain, ..) = &event
                        && is_non_finite(text)
                    {
                        self.non_finite.push((path.clone(), pos));
                    }
                    self.locations.values.entry(path).or_insert(pos);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A complex key (a map used as a key) gets a throwaway path.
                let path = self.place(&event, pos).unwrap_or_else(|| "?".into());
                self.locations.values.entry(path.clone()).or_insert(pos);
                self.stack.push(match event {
                    Event::MappingStart(..) => Frame::Map { path, key: None },
                    _ => Frame::Seq { path, next: 0 },
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// Builds the location index of a YAML text, or the mistakes that stop it: a syntax
/// error, or keys written twice in one map.
pub fn index(file: &Path, text: &str) -> Result<Locations, Diagnostics> {
    let mut indexer = Indexer::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut indexer, false).map_err(|e| {
        let pos = Pos::from(*e.marker());
        Diagnostics(vec![Diagnostic {
            file: file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            path: String::new(),
            message: format!("this is not valid YAML: {}", e.info()),
            hint: Some("YAML nests by indentation: check that this line and the one above line up with their siblings, with spaces, not tabs".into()),
        }])
    })?;
    if !indexer.non_finite.is_empty() {
        return Err(Diagnostics(
            indexer
                .non_finite
                .into_iter()
                .map(|(path, at)| Diagnostic {
                    file: file.to_path_buf(),
                    line: at.line,
                    column: at.column,
                    path,
                    message: "infinity and not-a-number are not values stagegate can use".into(),
                    hint: Some("write a finite number, or leave the key out for its default".into()),
                })
                .collect(),
        ));
    }
    if !indexer.duplicates.is_empty() {
        return Err(Diagnostics(
            indexer
                .duplicates
                .into_iter()
                .map(|(path, first, again)| Diagnostic {
                    file: file.to_path_buf(),
                    line: again.line,
                    column: again.column,
                    path: path.clone(),
                    message: format!(
                        "`{}` is given twice in the same map (first at line {})",
                        path.rsplit('.').next().unwrap_or(&path),
                        first.line
                    ),
                    hint: Some("a key may appear once; the second would silently replace the first".into()),
                })
                .collect(),
        ));
    }
    Ok(indexer.locations)
}

/// Reads `text` (the contents of `file`) into `T`, with the location index.
///
/// Structural mistakes (an unknown key, a list where a map belongs, a word where a
/// number belongs) stop here with one diagnostic, since the document's shape is unknown
/// past them.
pub fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<(T, Locations), Diagnostics> {
    let locations = index(file, text)?;
    let deserializer = serde_yaml::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, T>(deserializer) {
        Ok(value) => Ok((value, locations)),
        Err(err) => {
            let path = render_path(err.path());
            let inner = err.into_inner();
            Err(Diagnostics(vec![structural(file, &locations, path, &inner)]))
        }
    }
}

/// Reads `text` (the contents of `file`) into a generic document, with the location
/// index. Only syntax errors stop here; shapes are checked part by part afterwards.
pub fn to_value(file: &Path, text: &str) -> Result<(serde_json::Value, Locations), Diagnostics> {
    let locations = index(file, text)?;
    // Through serde_path_to_error, so a value the document model cannot hold (an
    // integer past 128 bits, say) is named by its key.
    match serde_path_to_error::deserialize::<_, serde_json::Value>(serde_yaml::Deserializer::from_str(text)) {
        Ok(v) => Ok((v, locations)),
        Err(e) => {
            let path = render_path(e.path());
            Err(Diagnostics(vec![structural(file, &locations, path, e.inner())]))
        }
    }
}

/// Reads a value already cut out of a document (a criterion written as a map, say)
/// into `T`; `base` is its key path, for the diagnostic.
pub fn parse_value<T: DeserializeOwned>(
    file: &Path,
    locations: &Locations,
    base: &str,
    value: serde_json::Value,
) -> Result<T, Diagnostic> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|err| {
        let sub = render_path(err.path());
        let path = match (base.is_empty(), sub.is_empty()) {
            (_, true) => base.to_string(),
            (true, false) => sub,
            (false, false) if sub.starts_with('[') => format!("{base}{sub}"),
            (false, false) => format!("{base}.{sub}"),
        };
        let message = err.into_inner().to_string();
        describe(file, locations, path, &message, None)
    })
}

fn structural(file: &Path, locations: &Locations, path: String, err: &serde_yaml::Error) -> Diagnostic {
    let message = err.to_string();
    // serde_yaml appends " at line L column C"; the diagnostic carries that itself.
    let message = match message.find(" at line ") {
        Some(cut) => message[..cut].to_string(),
        None => message,
    };
    // It also prefixes the path it knows; the diagnostic shows the path on its own.
    let message = match message.split_once(": ") {
        Some((prefix, rest)) if !prefix.contains(' ') && !prefix.is_empty() => rest.to_string(),
        _ => message,
    };
    let fallback = err.location().map(|l| Pos { line: l.line(), column: l.column() });
    describe(file, locations, path, &message, fallback)
}

/// Turns a serde message into a diagnostic, rewording the common ones.
fn describe(file: &Path, locations: &Locations, path: String, message: &str, fallback: Option<Pos>) -> Diagnostic {
    let mut hint = None;
    let mut text = message.to_string();
    let mut path = path;
    if let Some((field, expected)) = unknown_field(message) {
        // Point at the offending key itself (the path may or may not name it yet).
        let named = path == field || path.ends_with(&format!(".{field}"));
        let key_path = if named { path.clone() } else { join_key(&path, &field) };
        let valid: Vec<&str> = expected.iter().map(String::as_str).collect();
        text = format!("unknown key `{field}`");
        let elsewhere = super::schema::misplaced_hint(&field).map(|h| format!("; {h}")).unwrap_or_default();
        hint = Some(match nearest(&field, valid.iter().copied()) {
            Some(best) => format!("did you mean `{best}`? valid keys here: {}", valid.join(", ")),
            None => format!("valid keys here: {}{elsewhere}", valid.join(", ")),
        });
        path = key_path;
    } else if let Some(rest) = message.strip_prefix("unknown variant ") {
        text = format!("unknown value {}", rest.split(", expected").next().unwrap_or(rest));
        if let Some(expected) = rest.split_once("expected ").map(|(_, e)| e) {
            hint = Some(format!("expected {expected}"));
        }
    } else if let Some(field) = message.strip_prefix("missing field ") {
        text = format!("missing required key {field}");
    }
    let pos = if locations.keys.contains_key(&path) {
        locations.key(&path)
    } else {
        fallback.unwrap_or_else(|| locations.value(&path))
    };
    Diagnostic { file: file.to_path_buf(), line: pos.line, column: pos.column, path, message: text, hint }
}

/// Splits serde's "unknown field `x`, expected one of `a`, `b`" into its parts.
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest.split('`').enumerate().filter(|(i, _)| i % 2 == 1).map(|(_, s)| s.to_string()).collect();
    Some((field.to_string(), expected))
}

fn render_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out = join_index(&out, *index),
            Segment::Map { key } => out = join_key(&out, key),
            Segment::Enum { variant } => out = join_key(&out, variant),
            Segment::Unknown => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "name: x\nworkload:\n  duration: 30s\nstages:\n  - name: a\n    faults:\n      - { kind: latency, at: store }\n";

    #[test]
    fn index_knows_keys_and_values() {
        let loc = index(Path::new("s.yaml"), DOC).unwrap();
        assert_eq!(loc.key("workload.duration"), Pos { line: 3, column: 3 });
        assert_eq!(loc.value("workload.duration"), Pos { line: 3, column: 13 });
        assert_eq!(loc.value("stages[0].name"), Pos { line: 5, column: 11 });
        assert_eq!(loc.value("stages[0].faults[0].at").line, 7);
        // Unknown paths fall back to their nearest ancestor.
        assert_eq!(loc.value("stages[0].faults[0].delay").line, 7);
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Small {
        name: String,
        workload: SmallWorkload,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct SmallWorkload {
        duration: String,
        warmup: Option<String>,
    }

    #[test]
    fn unknown_keys_point_at_the_key_and_suggest() {
        let text = "name: x\nworkload:\n  duraton: 30s\n";
        let err = parse::<Small>(Path::new("s.yaml"), text).unwrap_err();
        let d = &err.0[0];
        assert_eq!((d.line, d.column), (3, 3));
        assert_eq!(d.path, "workload.duraton");
        assert_eq!(d.message, "unknown key `duraton`");
        assert!(d.hint.as_deref().unwrap().contains("did you mean `duration`?"));
    }
}
