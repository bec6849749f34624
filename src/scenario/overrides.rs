//! `--set PATH=VALUE`: what-if overrides applied to the scenario before it is checked.
//!
//! PATH uses the key paths of error messages (`stages[2].faults[0].delay`,
//! `workload.arrival.rate`); VALUE is read as YAML (`300ms`, `50`, `{ rate: 50/s }`).
//! An override may set a key the file does not have (it is then checked like any other
//! key) but cannot reach into a list item that does not exist.

use serde_json::Value;

/// One `--set` as given.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub path: String,
    pub value: Value,
    /// The argument as the user wrote it, for reports.
    pub text: String,
}

enum Segment {
    Key(String),
    Index(usize),
}

fn segments(path: &str) -> Result<Vec<Segment>, String> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if key.is_empty() && (out.is_empty() || rest.is_empty()) {
            return Err(format!("`{path}` has an empty key"));
        }
        if !key.is_empty() {
            out.push(Segment::Key(key.to_string()));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let close = inner.find(']').ok_or_else(|| format!("`{path}` has an unclosed `[`"))?;
            let index =
                inner[..close].parse().map_err(|_| format!("`{path}`: `{}` is not an index", &inner[..close]))?;
            out.push(Segment::Index(index));
            rest = &inner[close + 1..];
        }
        if !rest.is_empty() {
            return Err(format!("`{path}`: unexpected `{rest}`"));
        }
    }
    Ok(out)
}

/// Parses one `PATH=VALUE` argument.
pub fn parse(arg: &str) -> Result<Override, String> {
    let (path, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("`--set {arg}`: expected PATH=VALUE, e.g. `workload.arrival.rate=50/s`"))?;
    segments(path.trim()).map_err(|e| format!("`--set {arg}`: {e}"))?;
    let value: Value = if value.trim().is_empty() {
        Value::String(String::new())
    } else {
        // Checked like a file: keys given twice, infinities.
        if let Err(d) = super::yaml::index(std::path::Path::new("--set"), value) {
            let first = d.0.first().map(|d| {
                let at = if d.path.is_empty() { String::new() } else { format!(" (at `{}`)", d.path) };
                format!("{}{at}", d.message)
            });
            return Err(format!("`--set {arg}`: {}", first.unwrap_or_else(|| "the value is not valid YAML".into())));
        }
        serde_yaml::from_str(value).map_err(|e| format!("`--set {arg}`: the value is not valid YAML: {e}"))?
    };
    Ok(Override { path: path.trim().to_string(), value, text: arg.to_string() })
}

/// Applies `o` to the document `root`. A missing map key on the way is created (and
/// then checked like any key); a missing list or list item is an error.
pub fn apply(root: &mut Value, o: &Override) -> Result<(), String> {
    let segs = segments(&o.path)?;
    let mut node = root;
    let mut at = String::new();
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let next_is_index = matches!(segs.get(i + 1), Some(Segment::Index(_)));
        match seg {
            Segment::Key(k) => {
                let Value::Object(map) = node else {
                    return Err(format!("`{at}` is not a map, so it has no key `{k}`"));
                };
                at = super::yaml::join_key(&at, k);
                if last {
                    map.insert(k.clone(), o.value.clone());
                    return Ok(());
                }
                if next_is_index && !map.contains_key(k) {
                    return Err(format!("there is no list `{at}` to index into"));
                }
                node = map.entry(k.clone()).or_insert_with(|| Value::Object(Default::default()));
            }
            Segment::Index(n) => {
                let Value::Array(list) = node else {
                    return Err(format!("`{at}` is not a list, so it has no item [{n}]"));
                };
                let len = list.len();
                let item = list.get_mut(*n).ok_or_else(|| format!("`{at}` has no item [{n}] (it has {len})"))?;
                at = super::yaml::join_index(&at, *n);
                if last {
                    *item = o.value.clone();
                    return Ok(());
                }
                node = item;
            }
        }
    }
    Err("empty path".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sets_nested_keys_and_list_items() {
        let mut doc = json!({"workload": {"arrival": {"rate": "200/s"}}, "stages": [{"name": "a", "faults": [{"delay": "100ms"}]}]});
        apply(&mut doc, &parse("stages[0].faults[0].delay=300ms").unwrap()).unwrap();
        apply(&mut doc, &parse("workload.arrival.rate=50/s").unwrap()).unwrap();
        apply(&mut doc, &parse("seed=7").unwrap()).unwrap();
        assert_eq!(doc["stages"][0]["faults"][0]["delay"], "300ms");
        assert_eq!(doc["workload"]["arrival"]["rate"], "50/s");
        assert_eq!(doc["seed"], 7);
    }

    #[test]
    fn refuses_missing_items_and_bad_paths() {
        let mut doc = json!({"stages": [{"name": "a"}]});
        let e = apply(&mut doc, &parse("stages[3].name=x").unwrap()).unwrap_err();
        assert_eq!(e, "`stages` has no item [3] (it has 1)");
        let e = apply(&mut doc, &parse("stages[0].faults[0].delay=1s").unwrap()).unwrap_err();
        assert_eq!(e, "there is no list `stages[0].faults` to index into");
        assert!(parse("stages[x].name=1").is_err());
        assert!(parse("justakey").is_err());
    }
}
