//! `stagegate flags audit`: the flag inventory's governance, checked.
//!
//! Flags come from scenarios (their `flags.definitions`, and which stages set them) and,
//! optionally, an inventory: a flagd flag file, whose flags carry their governance in
//! flagd's flag `metadata` (`owner`, `category`, `expires`, `created`). Each rule gives
//! findings of one kind; each kind has a severity (error, warning, or off) that the
//! command line can change. Pure: the command reads the files and the date, and this
//! module judges them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::Serialize;
use serde_json::Value;

use super::Category;

/// How much a finding counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Off,
    Warning,
    Error,
}

impl Severity {
    fn parse(text: &str) -> Option<Severity> {
        match text {
            "error" => Some(Severity::Error),
            "warning" | "warn" => Some(Severity::Warning),
            "off" => Some(Severity::Off),
            _ => None,
        }
    }
}

/// Every kind of finding: its name, default severity, and what it means.
pub const KINDS: [(&str, Severity, &str); 13] = [
    ("missing-owner", Severity::Error, "no owner: nobody answers for the flag"),
    ("missing-category", Severity::Error, "no category: release, experiment, operational or permission"),
    ("unknown-category", Severity::Error, "a category outside the taxonomy"),
    ("renamed-category", Severity::Warning, "a category under its former name (`experimental`, now `experiment`)"),
    ("expired", Severity::Error, "past its expiry date: remove it, or move the date with a reason"),
    ("no-expiry", Severity::Error, "a temporary flag (release, experiment) without an expiry"),
    ("too-old", Severity::Warning, "a temporary flag living past its category's maximum age"),
    ("permanent-with-expiry", Severity::Warning, "a permanent flag (operational, permission) given an expiry"),
    ("naming", Severity::Error, "a name that breaks the naming rule"),
    ("unused", Severity::Warning, "defined in a scenario, but no stage sets it off its default"),
    ("undefined", Severity::Error, "rehearsed by a scenario, but missing from the inventory"),
    ("unrehearsed", Severity::Warning, "in the inventory, but no scenario rehearses it"),
    ("conflicting-definition", Severity::Error, "sources give the flag a different owner, category or expiry"),
];

/// The audit's settings.
#[derive(Debug, Clone)]
pub struct Rules {
    pub today: NaiveDate,
    /// Names must match this, when given.
    pub naming: Option<regex::Regex>,
    /// The longest a temporary flag may live, in days, by category.
    pub max_age_days: BTreeMap<Category, i64>,
    pub severity: BTreeMap<&'static str, Severity>,
}

impl Rules {
    /// The defaults: release flags live at most 90 days, experiments 180.
    pub fn new(today: NaiveDate) -> Rules {
        Rules {
            today,
            naming: None,
            max_age_days: BTreeMap::from([(Category::Release, 90), (Category::Experiment, 180)]),
            severity: KINDS.iter().map(|(k, s, _)| (*k, *s)).collect(),
        }
    }

    /// Applies `KIND=SEVERITY`.
    pub fn set_severity(&mut self, text: &str) -> Result<(), String> {
        let (kind, level) = text.split_once('=').ok_or_else(|| format!("`{text}`: write KIND=error|warning|off"))?;
        let level = Severity::parse(level).ok_or_else(|| format!("`{text}`: the severity is error, warning or off"))?;
        let names: Vec<&str> = KINDS.iter().map(|k| k.0).collect();
        let kind = KINDS
            .iter()
            .find(|k| k.0 == kind)
            .map(|k| k.0)
            .ok_or_else(|| format!("`{text}`: unknown finding `{kind}`; the kinds are {}", names.join(", ")))?;
        self.severity.insert(kind, level);
        Ok(())
    }

    /// Applies `CATEGORY=DURATION` (`release=60d`).
    pub fn set_max_age(&mut self, text: &str) -> Result<(), String> {
        let (name, age) =
            text.split_once('=').ok_or_else(|| format!("`{text}`: write CATEGORY=DURATION, e.g. release=60d"))?;
        let category = Category::parse(name)
            .filter(|c| c.temporary())
            .ok_or_else(|| format!("`{text}`: a maximum age is for `release` or `experiment` flags"))?;
        let days = humantime::parse_duration(age)
            .map_err(|e| format!("`{text}`: `{age}` is not a duration like 60d, 12w or 6months ({e})"))?
            .as_secs()
            .div_ceil(86_400);
        self.max_age_days.insert(category, days as i64);
        Ok(())
    }
}

/// The keys of a flagd file's `flags` object in the order written, twice if written
/// twice.
struct FlagKeys(Option<Vec<String>>);

impl<'de> serde::Deserialize<'de> for FlagKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Doc;
        impl<'de> serde::de::Visitor<'de> for Doc {
            type Value = Option<Vec<String>>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a flagd document")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "flags" {
                        out = Some(map.next_value::<Keys>()?.0);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(out)
            }
        }
        struct Keys(Vec<String>);
        impl<'de> serde::Deserialize<'de> for Keys {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Vec<String>;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("an object of flags")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                        let mut keys = Vec::new();
                        while let Some(k) = map.next_key::<String>()? {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            keys.push(k);
                        }
                        Ok(keys)
                    }
                }
                d.deserialize_map(V).map(Keys)
            }
        }
        d.deserialize_map(Doc).map(FlagKeys)
    }
}

/// One flag as the audit sees it, gathered from every source.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub key: String,
    pub in_inventory: bool,
    /// Scenarios whose stages set it off its default.
    pub rehearsed_by: Vec<PathBuf>,
    /// Scenarios that define it but never set it.
    pub unused_in: Vec<PathBuf>,
    /// Its governance as each source gives it: the inventory's first when it has the
    /// flag, then each scenario's.
    pub records: Vec<(PathBuf, Governance)>,
}

/// What a source says of a flag's governance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Governance {
    pub owner: Option<String>,
    /// As written (it may be outside the taxonomy).
    pub category: Option<String>,
    pub expires: Option<NaiveDate>,
    pub created: Option<NaiveDate>,
}

impl Governance {
    /// Whether two sources say the same (a date of creation only one gives is no
    /// disagreement: scenarios do not give one).
    fn agrees(&self, other: &Governance) -> bool {
        self.owner == other.owner
            && self.category.as_deref().map(Category::parse) == other.category.as_deref().map(Category::parse)
            && self.category.is_some() == other.category.is_some()
            && self.expires == other.expires
            && (self.created.is_none() || other.created.is_none() || self.created == other.created)
    }

    fn describe(&self) -> String {
        format!(
            "owner {}, category {}, expires {}",
            self.owner.as_deref().unwrap_or("-"),
            self.category.as_deref().unwrap_or("-"),
            self.expires.map_or("-".to_string(), |d| d.to_string())
        )
    }
}

/// One thing wrong with one flag.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub kind: &'static str,
    pub severity: Severity,
    pub flag: String,
    /// The file where it shows.
    pub file: PathBuf,
    pub message: String,
}

/// Every flag, by key, gathered from the sources.
#[derive(Debug, Default)]
pub struct Inventory {
    pub flags: BTreeMap<String, Entry>,
    pub inventory_file: Option<PathBuf>,
    pub scenarios: Vec<PathBuf>,
}

impl Inventory {
    /// Takes in a checked scenario.
    pub fn add_scenario(&mut self, file: &Path, plan: &crate::scenario::Plan) {
        self.scenarios.push(file.to_path_buf());
        for def in &plan.flags.definitions {
            let e =
                self.flags.entry(def.key.clone()).or_insert_with(|| Entry { key: def.key.clone(), ..Entry::default() });
            let given = Governance {
                owner: def.owner.clone(),
                category: def.category_as_written.clone().or(def.category.map(|c| c.name().to_string())),
                expires: def.expires,
                created: None,
            };
            e.records.push((file.to_path_buf(), given));
            let set = plan
                .stages
                .iter()
                .any(|s| s.flags.get(&def.key) != Some(&super::FlagState::Fixed(def.default.clone())));
            if set {
                e.rehearsed_by.push(file.to_path_buf());
            } else {
                e.unused_in.push(file.to_path_buf());
            }
        }
    }

    /// Takes in a flagd flag file (its text); governance comes from each flag's
    /// `metadata`. Returns why it cannot be read.
    pub fn add_flagd(&mut self, file: &Path, text: &str) -> Result<(), String> {
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("{}: not JSON ({e})", file.display()))?;
        // A JSON object keeps the last of two equal keys: a flag defined twice would
        // be audited as whichever came last.
        if let Ok(FlagKeys(Some(keys))) = serde_json::from_str::<FlagKeys>(text) {
            let mut seen = std::collections::BTreeSet::new();
            if let Some(twice) = keys.iter().find(|k| !seen.insert(k.as_str())) {
                return Err(format!("{}: flags.{twice} is defined twice", file.display()));
            }
        }
        let flags = doc
            .get("flags")
            .and_then(Value::as_object)
            .ok_or_else(|| format!("{}: no `flags` object: not a flagd flag file", file.display()))?;
        self.inventory_file = Some(file.to_path_buf());
        for (key, flag) in flags {
            let at = |field: &str| format!("{}: flags.{}{field}", file.display(), shown(key));
            if !flag.is_object() {
                return Err(format!("{}: {flag} is not a flag (an object)", at("")));
            }
            let meta = flag.get("metadata").cloned().unwrap_or(Value::Null);
            if !(meta.is_object() || meta.is_null()) {
                return Err(format!("{}: {meta} is not an object", at(".metadata")));
            }
            for field in ["owner", "category"] {
                if let Some(v) = meta.get(field).filter(|v| !v.is_string() && !v.is_null()) {
                    return Err(format!("{}: {v} is not a string", at(&format!(".metadata.{field}"))));
                }
            }
            let text = |name: &str| meta.get(name).and_then(Value::as_str).map(str::to_string);
            let date = |name: &str| -> Result<Option<NaiveDate>, String> {
                match meta.get(name) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => {
                        NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().filter(|_| s.len() == 10).map(Some).ok_or_else(
                            || {
                                format!(
                                    "{}: flags.{key}.metadata.{name}: `{s}` is not a date like 2027-03-01",
                                    file.display()
                                )
                            },
                        )
                    }
                    Some(other) => Err(format!(
                        "{}: flags.{key}.metadata.{name}: {other} is not a date like \"2027-03-01\"",
                        file.display()
                    )),
                }
            };
            let (expires, created) = (date("expires")?, date("created")?);
            let e = self.flags.entry(key.clone()).or_insert_with(|| Entry { key: key.clone(), ..Entry::default() });
            e.in_inventory = true;
            // The inventory is the record: its governance wins over a scenario's copy.
            let owner = meta.get("owner").and_then(Value::as_str).map(str::to_string);
            let given = Governance { owner, category: text("category"), expires, created };
            // The inventory is the record: it comes first.
            e.records.insert(0, (file.to_path_buf(), given));
        }
        Ok(())
    }

    /// Every finding, worst first, then by flag.
    pub fn audit(&self, rules: &Rules) -> Vec<Finding> {
        let mut out = Vec::new();
        for e in self.flags.values() {
            let mut say = |kind: &'static str, file: &Path, message: String| {
                let severity = rules.severity.get(kind).copied().unwrap_or(Severity::Error);
                if severity != Severity::Off {
                    out.push(Finding { kind, severity, flag: e.key.clone(), file: file.to_path_buf(), message });
                }
            };
            // Sources that disagree are a finding of their own; each different record is
            // judged (only the inventory's when it has the flag: it is the record).
            let mut distinct: Vec<&(PathBuf, Governance)> = Vec::new();
            for r in &e.records {
                if !distinct.iter().any(|d| d.1.agrees(&r.1)) {
                    distinct.push(r);
                }
            }
            if let [first, rest @ ..] = distinct.as_slice() {
                for other in rest {
                    say(
                        "conflicting-definition",
                        &other.0,
                        format!(
                            "defined as {} here, and as {} in {}",
                            other.1.describe(),
                            first.1.describe(),
                            first.0.display()
                        ),
                    );
                }
            }
            let judged: Vec<&(PathBuf, Governance)> =
                if e.in_inventory { distinct.iter().take(1).copied().collect() } else { distinct };
            for (home, g) in judged {
                governance(&mut say, home, g, rules, &e.key);
            }
            if e.rehearsed_by.is_empty() {
                for file in &e.unused_in {
                    say("unused", file, "defined, but no stage sets it off its default".into());
                }
            }
            if let Some(inventory) = &self.inventory_file {
                if !e.in_inventory {
                    for file in e.rehearsed_by.iter().chain(e.unused_in.iter()).take(1) {
                        say("undefined", file, format!("not in the inventory {}", inventory.display()));
                    }
                } else if !self.scenarios.is_empty() && e.rehearsed_by.is_empty() {
                    say("unrehearsed", inventory, "no scenario given rehearses it".into());
                }
            }
        }
        out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.flag.cmp(&b.flag)).then(a.kind.cmp(b.kind)));
        out
    }
}

/// The governance rules on one source's record of flag `key`.
fn governance(
    say: &mut impl FnMut(&'static str, &Path, String),
    home: &Path,
    e: &Governance,
    rules: &Rules,
    key: &str,
) {
    if e.owner.as_deref().is_none_or(|o| o.trim().is_empty()) {
        say("missing-owner", home, "no owner".into());
    }
    let category = match e.category.as_deref() {
        None => {
            say("missing-category", home, "no category".into());
            None
        }
        Some(c) => match Category::parse(c) {
            Some(cat) if c != cat.name() => {
                say("renamed-category", home, format!("category `{c}` is now called `{}`; write that", cat.name()));
                Some(cat)
            }
            Some(cat) => Some(cat),
            None => {
                say("unknown-category", home, format!("category `{c}` is not one of {}", Category::NAMES.join(", ")));
                None
            }
        },
    };
    if let Some(date) = e.expires
        && date < rules.today
    {
        say("expired", home, format!("expired on {date}"));
    }
    if let Some(cat) = category {
        if cat.temporary() && e.expires.is_none() {
            say("no-expiry", home, format!("no expiry on this {} flag: temporary flags need one", cat.name()));
        }
        if !cat.temporary()
            && let Some(date) = e.expires
        {
            say("permanent-with-expiry", home, format!("a permanent {} flag expiring on {date}", cat.name()));
        }
        if let Some(max) = rules.max_age_days.get(&cat) {
            let age = e.created.map(|c| (rules.today - c).num_days());
            let planned = match (e.created, e.expires) {
                (Some(c), Some(x)) => Some((x - c).num_days()),
                (None, Some(x)) => Some((x - rules.today).num_days()),
                _ => None,
            };
            if let Some(age) = age.filter(|a| a > max) {
                say("too-old", home, format!("{age} days old; {} flags live at most {max} days", cat.name()));
            } else if let Some(life) = planned.filter(|l| l > max) {
                say("too-old", home, format!("set to live {life} days; {} flags live at most {max} days", cat.name()));
            }
        }
    }
    if let Some(rule) = &rules.naming
        && !rule.is_match(key)
    {
        say("naming", home, format!("the name does not match `{}`", rule.as_str()));
    }
}

/// The findings as a table, with a last line counting them.
/// Text from an inventory or a scenario as the terminal shows it: control and
/// direction characters escaped (`\u{1b}`), so a name cannot rewrite the screen.
pub fn shown(text: &str) -> String {
    text.chars()
        .map(|c| if crate::report::hidden(c) { c.escape_unicode().to_string() } else { c.to_string() })
        .collect()
}

pub fn table(findings: &[Finding], flags: usize) -> String {
    let mut s = String::new();
    if !findings.is_empty() {
        let w = findings.iter().map(|f| shown(&f.flag).chars().count()).max().unwrap_or(4).clamp(4, 60);
        s.push_str(&format!("{:<7}  {:<w$}  {:<22}  {}\n", "level", "flag", "finding", "detail"));
        for f in findings {
            let level = match f.severity {
                Severity::Error => "ERROR",
                Severity::Warning => "warning",
                Severity::Off => "off",
            };
            s.push_str(&format!(
                "{level:<7}  {:<w$}  {:<22}  {} ({})\n",
                shown(&f.flag),
                f.kind,
                shown(&f.message),
                shown(&f.file.display().to_string())
            ));
        }
        s.push('\n');
    }
    let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
    s.push_str(&format!("{flags} flag(s) audited: {errors} error(s), {} warning(s)\n", findings.len() - errors));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn kinds(found: &[Finding], flag: &str) -> Vec<&'static str> {
        found.iter().filter(|f| f.flag == flag).map(|f| f.kind).collect()
    }

    #[test]
    fn each_rule_finds_its_own_kind_in_an_inventory() {
        let text = r#"{ "flags": {
            "ok-release": { "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "metadata": { "owner": "a", "category": "release", "created": "2026-11-01", "expires": "2027-01-01" } },
            "no-owner": { "state": "ENABLED", "variants": {}, "defaultVariant": "off",
                "metadata": { "category": "operational" } },
            "no-category": { "state": "ENABLED", "variants": {}, "defaultVariant": "off", "metadata": { "owner": "a" } },
            "odd-category": { "state": "ENABLED", "variants": {}, "defaultVariant": "off",
                "metadata": { "owner": "a", "category": "killswitch" } },
            "gone": { "state": "ENABLED", "variants": {}, "defaultVariant": "off",
                "metadata": { "owner": "a", "category": "release", "expires": "2026-11-01" } },
            "forever": { "state": "ENABLED", "variants": {}, "defaultVariant": "off",
                "metadata": { "owner": "a", "category": "experiment" } },
            "old": { "state": "ENABLED", "variants": {}, "defaultVariant": "off",
                "metadata": { "owner": "a", "category": "release", "created": "2026-01-01", "expires": "2027-06-01" } },
            "perm": { "state": "ENABLED", "variants": {}, "defaultVariant": "off",
                "metadata": { "owner": "a", "category": "permission", "expires": "2027-06-01" } },
            "Bad_Name": { "state": "ENABLED", "variants": {}, "defaultVariant": "off",
                "metadata": { "owner": "a", "category": "operational" } },
            "old-name": { "state": "ENABLED", "variants": {}, "defaultVariant": "off",
                "metadata": { "owner": "a", "category": "experimental", "expires": "2027-01-01" } }
        } }"#;
        let mut inv = Inventory::default();
        inv.add_flagd(Path::new("flags.json"), text).unwrap();
        let mut rules = Rules::new(date("2026-12-01"));
        rules.naming = Some(regex::Regex::new("^[a-z][a-z0-9-]*$").unwrap());
        let found = inv.audit(&rules);
        assert!(kinds(&found, "ok-release").is_empty(), "{found:?}");
        assert_eq!(kinds(&found, "no-owner"), ["missing-owner"]);
        assert_eq!(kinds(&found, "no-category"), ["missing-category"]);
        assert_eq!(kinds(&found, "odd-category"), ["unknown-category"]);
        assert_eq!(kinds(&found, "gone"), ["expired"]);
        assert_eq!(kinds(&found, "forever"), ["no-expiry"]);
        assert_eq!(kinds(&found, "old"), ["too-old"]);
        assert_eq!(kinds(&found, "perm"), ["permanent-with-expiry"]);
        assert_eq!(kinds(&found, "Bad_Name"), ["naming"]);
        assert_eq!(kinds(&found, "old-name"), ["renamed-category"]);
        assert_eq!(found[0].severity, Severity::Error, "errors first");

        rules.set_severity("expired=off").unwrap();
        rules.set_max_age("release=600d").unwrap();
        let found = inv.audit(&rules);
        assert!(kinds(&found, "gone").is_empty() && kinds(&found, "old").is_empty(), "{found:?}");
        assert!(rules.set_severity("bogus=error").unwrap_err().contains("the kinds are missing-owner"));
        assert!(rules.set_max_age("permission=1d").is_err());
        assert!(rules.set_max_age("release=60").unwrap_err().contains("not a duration like 60d"));
    }

    #[test]
    fn an_inventory_with_governance_of_the_wrong_type_is_refused_and_names_are_shown_escaped() {
        for (text, field) in [
            (r#"{"flags": {"a": null}}"#, "flags.a: null is not a flag"),
            (r#"{"flags": {"a": {"metadata": [1]}}}"#, "flags.a.metadata: [1] is not an object"),
            (r#"{"flags": {"a": {"metadata": {"owner": 123}}}}"#, "flags.a.metadata.owner: 123 is not a string"),
            (r#"{"flags": {"a": {"metadata": {"category": ["release"]}}}}"#, "flags.a.metadata.category"),
        ] {
            let e = Inventory::default().add_flagd(Path::new("f.json"), text).unwrap_err();
            assert!(e.contains(field), "{e}");
        }
        let mut inv = Inventory::default();
        inv.add_flagd(Path::new("f.json"), r#"{"flags": {"\u202eevil\u001b[31m": {}}}"#).unwrap();
        let out = table(&inv.audit(&Rules::new(date("2026-12-01"))), 1);
        assert!(out.lines().all(|l| !l.chars().any(crate::report::hidden)), "{out:?}");
        assert!(out.contains("\\u{202e}evil\\u{1b}[31m"), "{out}");
    }

    #[test]
    fn a_flag_defined_twice_in_the_inventory_is_refused() {
        let mut inv = Inventory::default();
        let twice = r#"{"flags": {"a": {"metadata": {}}, "b": {}, "a": {"metadata": {"owner": "x"}}}}"#;
        let e = inv.add_flagd(Path::new("f.json"), twice).unwrap_err();
        assert_eq!(e, "f.json: flags.a is defined twice");
        assert!(inv.add_flagd(Path::new("g.json"), r#"{"flags": {"a": {}, "b": {}}, "$schema": "x"}"#).is_ok());
    }

    #[test]
    fn a_flagd_file_with_a_bad_date_is_refused_naming_the_field() {
        let mut inv = Inventory::default();
        let e = inv
            .add_flagd(Path::new("f.json"), r#"{"flags": {"x": {"metadata": {"expires": "next year"}}}}"#)
            .unwrap_err();
        assert!(e.contains("f.json: flags.x.metadata.expires: `next year`"), "{e}");
        assert!(inv.add_flagd(Path::new("f.json"), "[]").unwrap_err().contains("not a flagd flag file"));
    }
}
