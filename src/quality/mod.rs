//! Data quality: the ledger of what was sent and acknowledged, and the counts that
//! compare it with what the system under test actually produced.
//!
//! The [`Ledger`] keeps, per record key, a hash of each field's value as sent and the
//! record's breakdown [`Tags`]; it never keeps the records themselves.
//! [`Ledger::judge`] reads the observed output and counts lost, duplicated and corrupted
//! records, for the whole stage and by phase and flag variant. Fetching the output is
//! the target's business (see [`crate::sut`]); this file only compares.

pub mod freshness;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};
use xxhash_rust::xxh3::xxh3_64;

use crate::measure::Phase;

/// Data-quality counts of one stage (or one slice of it). See the scenario format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DataCounts {
    /// Records sent to the system under test.
    pub sent: u64,
    /// Records it acknowledged (2xx).
    pub acked: u64,
    /// Acknowledged, but never seen in the output.
    pub lost: u64,
    /// Records seen in the output more than once (each such record counts once).
    pub duplicated: u64,
    /// Records seen with a sent field missing or holding another value.
    pub corrupted: u64,
    /// Valid records the system under test refused (4xx).
    pub rejected_valid: u64,
    /// Records sent invalid on purpose that were acknowledged or reached the output.
    pub accepted_invalid: u64,
    /// Records whose personal data (`pii: true` fields) appears unmasked in the output.
    pub pii_exposed: u64,
}

impl DataCounts {
    fn add(&mut self, o: &DataCounts) {
        self.sent += o.sent;
        self.acked += o.acked;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.corrupted += o.corrupted;
        self.rejected_valid += o.rejected_valid;
        self.accepted_invalid += o.accepted_invalid;
        self.pii_exposed += o.pii_exposed;
    }
}

/// Where a record belongs in the breakdowns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags {
    /// The fault phase of its intended send time (`None`: warm-up, not broken down).
    pub phase: Option<Phase>,
    /// Its flag variant, for stages with fractional exposure.
    pub variant: Option<Arc<str>>,
    /// Sent invalid on purpose: it should be refused and never stored.
    pub invalid: bool,
    /// Sent during warm-up: counted apart, never judged.
    pub warmup: bool,
}

/// The data-quality counts of a stage, whole and broken down.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Judgement {
    /// Every record sent after warm-up.
    pub total: DataCounts,
    /// Records sent during warm-up (measured, not judged).
    pub warmup: DataCounts,
    /// Indexed by [`Phase`] (`before`, `during`, `after`).
    pub by_phase: [DataCounts; 3],
    pub by_variant: BTreeMap<String, DataCounts>,
    /// Whether the output was observed at all (without it, lost and the like are unknown).
    pub observed: bool,
}

#[derive(Debug)]
struct Entry {
    /// (field name, hash of its canonical JSON) for every field sent.
    fields: Vec<(Arc<str>, u64)>,
    /// Hashes of the values of its `pii` fields.
    pii: Vec<u64>,
    acked: bool,
    rejected: bool,
    tags: Tags,
}

/// What was sent in one stage, by record key.
#[derive(Debug, Default)]
pub struct Ledger {
    key_field: String,
    entries: HashMap<String, Entry>,
    names: HashMap<String, Arc<str>>,
    pii_fields: Vec<String>,
}

/// Hash of a JSON value's canonical text (object keys sorted).
fn hash(value: &Value) -> u64 {
    xxh3_64(value.to_string().as_bytes())
}

/// Whether any string inside `value` hashes to one of `pii`.
fn leaks(value: &Value, pii: &[u64]) -> bool {
    match value {
        Value::String(_) => pii.contains(&hash(value)),
        Value::Array(items) => items.iter().any(|v| leaks(v, pii)),
        Value::Object(map) => map.values().any(|v| leaks(v, pii)),
        _ => false,
    }
}

/// A record's key as text, whatever JSON type it has.
pub fn key_of(record: &Map<String, Value>, key_field: &str) -> Option<String> {
    match record.get(key_field)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

impl Ledger {
    /// An empty ledger for records keyed by `key_field`.
    pub fn new(key_field: &str) -> Self {
        Ledger { key_field: key_field.to_string(), ..Default::default() }
    }

    /// Watches these fields for personal data showing unmasked in the output.
    pub fn with_pii(mut self, fields: impl IntoIterator<Item = String>) -> Self {
        self.pii_fields = fields.into_iter().collect();
        self
    }

    /// Notes that `record` was sent, with its breakdown tags.
    pub fn sent(&mut self, key: &str, record: &Map<String, Value>, tags: Tags) {
        let fields = record
            .iter()
            .map(|(name, value)| {
                let name = self.names.entry(name.clone()).or_insert_with(|| Arc::from(name.as_str()));
                (name.clone(), hash(value))
            })
            .collect();
        let pii = self.pii_fields.iter().filter_map(|f| record.get(f)).filter(|v| v.is_string()).map(hash).collect();
        self.entries.insert(key.to_string(), Entry { fields, pii, acked: false, rejected: false, tags });
    }

    /// Notes that the record with `key` was acknowledged.
    pub fn acked(&mut self, key: &str) {
        if let Some(e) = self.entries.get_mut(key) {
            e.acked = true;
        }
    }

    /// Notes that the record with `key` was refused with a 4xx answer.
    pub fn rejected(&mut self, key: &str) {
        if let Some(e) = self.entries.get_mut(key) {
            e.rejected = true;
        }
    }

    /// The keys of every record sent.
    pub fn keys(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Number of records sent.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was sent.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Compares the observed output with the ledger. Output records whose key was not
    /// sent in this stage are ignored (they belong to another stage).
    pub fn judge<'a>(&self, observed: impl IntoIterator<Item = &'a Map<String, Value>>) -> Judgement {
        let mut seen: HashMap<&str, (u64, bool)> = HashMap::new();
        let mut exposed: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for record in observed {
            let Some(key) = key_of(record, &self.key_field) else { continue };
            let Some((stored_key, entry)) = self.entries.get_key_value(key.as_str()) else {
                continue;
            };
            let altered = entry.fields.iter().any(|(name, h)| record.get(name.as_ref()).map(hash) != Some(*h));
            if !entry.pii.is_empty() && record.values().any(|v| leaks(v, &entry.pii)) {
                exposed.insert(stored_key.as_str());
            }
            let slot = seen.entry(stored_key.as_str()).or_insert((0, false));
            slot.0 += 1;
            slot.1 |= altered;
        }
        let mut judgement = Judgement { observed: true, ..Default::default() };
        for (key, entry) in &self.entries {
            let mut c = DataCounts { sent: 1, acked: entry.acked as u64, ..Default::default() };
            c.pii_exposed = exposed.contains(key.as_str()) as u64;
            let seen_as = seen.get(key.as_str());
            if entry.tags.invalid {
                c.accepted_invalid = (entry.acked || seen_as.is_some()) as u64;
            } else {
                c.rejected_valid = entry.rejected as u64;
                match seen_as {
                    None => c.lost = entry.acked as u64,
                    Some((n, altered)) => {
                        c.duplicated = (*n > 1) as u64;
                        c.corrupted = *altered as u64;
                    }
                }
            }
            if entry.tags.warmup {
                judgement.warmup.add(&c);
                continue;
            }
            judgement.total.add(&c);
            if let Some(p) = entry.tags.phase {
                judgement.by_phase[p as usize].add(&c);
            }
            if let Some(v) = &entry.tags.variant {
                judgement.by_variant.entry(v.to_string()).or_default().add(&c);
            }
        }
        judgement
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn counts_lost_duplicated_and_corrupted() {
        let mut ledger = Ledger::new("id");
        for id in ["a", "b", "c", "d", "e"] {
            let variant = if id < "c" { "on" } else { "off" };
            let tags = Tags { variant: Some(Arc::from(variant)), phase: Some(Phase::During), ..Default::default() };
            ledger.sent(id, &rec(json!({"id": id, "amount": 1.5, "tags": ["x"]})), tags);
        }
        for id in ["a", "b", "c", "d"] {
            ledger.acked(id);
        }
        ledger.rejected("e");
        let output = [
            // a: fine, with a field the system under test added.
            rec(json!({"id": "a", "amount": 1.5, "tags": ["x"], "enriched": true})),
            // b: written twice.
            rec(json!({"id": "b", "amount": 1.5, "tags": ["x"]})),
            rec(json!({"id": "b", "amount": 1.5, "tags": ["x"]})),
            // c: amount altered.
            rec(json!({"id": "c", "amount": 2.5, "tags": ["x"]})),
            // d: missing entirely -> lost. A record from another stage is ignored.
            rec(json!({"id": "zzz", "amount": 1.5})),
        ];
        let judged = ledger.judge(output.iter());
        let expected = DataCounts {
            sent: 5,
            acked: 4,
            lost: 1,
            duplicated: 1,
            corrupted: 1,
            rejected_valid: 1,
            accepted_invalid: 0,
            pii_exposed: 0,
        };
        assert_eq!(judged.total, expected);
        assert_eq!(judged.by_phase[Phase::During as usize], expected);
        assert_eq!(judged.by_variant["on"].duplicated, 1);
        assert_eq!(judged.by_variant["off"].lost, 1);
        assert_eq!(judged.by_variant["off"].corrupted, 1);
    }

    #[test]
    fn a_missing_field_is_corruption() {
        let mut ledger = Ledger::new("id");
        ledger.sent("a", &rec(json!({"id": "a", "city": "Oslo"})), Tags::default());
        ledger.acked("a");
        let counts = ledger.judge([rec(json!({"id": "a"}))].iter()).total;
        assert_eq!(counts.corrupted, 1);
        assert_eq!(counts.lost, 0);
    }

    #[test]
    fn unacknowledged_and_absent_is_not_lost() {
        let mut ledger = Ledger::new("id");
        ledger.sent("a", &rec(json!({"id": "a"})), Tags::default());
        let counts = ledger.judge(std::iter::empty()).total;
        assert_eq!(counts.lost, 0);
        assert_eq!(counts.acked, 0);
    }

    #[test]
    fn personal_data_in_the_output_is_counted() {
        let mut ledger = Ledger::new("id").with_pii(["email".to_string()]);
        for id in ["a", "b", "c"] {
            ledger.sent(id, &rec(json!({"id": id, "email": format!("{id}@example.com")})), Tags::default());
            ledger.acked(id);
        }
        let output = [
            rec(json!({"id": "a", "email": "a@example.com"})),
            rec(json!({"id": "b", "email": "b***@example.com", "note": {"raw": ["b@example.com"]}})),
            rec(json!({"id": "c", "email": "c***@example.com"})),
        ];
        let counts = ledger.judge(output.iter()).total;
        assert_eq!(counts.pii_exposed, 2, "unmasked at top level and nested");
        assert_eq!(counts.corrupted, 2, "masking changes a sent field");
    }

    #[test]
    fn warmup_records_are_counted_apart() {
        let mut ledger = Ledger::new("id");
        ledger.sent("w", &rec(json!({"id": "w"})), Tags { warmup: true, ..Default::default() });
        ledger.sent("j", &rec(json!({"id": "j"})), Tags::default());
        ledger.acked("w");
        ledger.acked("j");
        let judged = ledger.judge(std::iter::empty());
        assert_eq!((judged.total.sent, judged.total.lost), (1, 1));
        assert_eq!((judged.warmup.sent, judged.warmup.lost), (1, 1));
    }

    #[test]
    fn invalid_records_must_be_refused() {
        let mut ledger = Ledger::new("id");
        let invalid = Tags { invalid: true, ..Default::default() };
        ledger.sent("a", &rec(json!({"id": "a"})), invalid.clone());
        ledger.sent("b", &rec(json!({"id": "b"})), invalid);
        ledger.acked("a");
        ledger.rejected("b");
        let counts = ledger.judge([rec(json!({"id": "a"}))].iter()).total;
        assert_eq!(counts.accepted_invalid, 1);
        assert_eq!(counts.rejected_valid, 0);
        assert_eq!(counts.lost, 0);
    }
}
