//! Data quality: the ledger of what was sent and acknowledged, and the counts that
//! compare it with what the system under test actually produced.
//!
//! The [`Ledger`] keeps, per record key, a hash of each field's value as sent; it never
//! keeps the records themselves. [`Ledger::judge`] reads the observed output and counts
//! lost, duplicated and corrupted records. Fetching the output is the target's business
//! (see [`crate::sut`]); this file only compares.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};
use xxhash_rust::xxh3::xxh3_64;

/// Data-quality counts of one stage. See the scenario format for each meaning.
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
}

#[derive(Debug)]
struct Entry {
    /// (field name, hash of its canonical JSON) for every field sent.
    fields: Vec<(Arc<str>, u64)>,
    acked: bool,
    rejected: bool,
}

/// What was sent in one stage, by record key.
#[derive(Debug, Default)]
pub struct Ledger {
    key_field: String,
    entries: HashMap<String, Entry>,
    names: HashMap<String, Arc<str>>,
}

/// Hash of a JSON value's canonical text (object keys sorted).
fn hash(value: &Value) -> u64 {
    xxh3_64(value.to_string().as_bytes())
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
        Ledger {
            key_field: key_field.to_string(),
            ..Default::default()
        }
    }

    /// Notes that `record` was sent.
    pub fn sent(&mut self, key: &str, record: &Map<String, Value>) {
        let fields = record
            .iter()
            .map(|(name, value)| {
                let name = self
                    .names
                    .entry(name.clone())
                    .or_insert_with(|| Arc::from(name.as_str()));
                (name.clone(), hash(value))
            })
            .collect();
        self.entries.insert(
            key.to_string(),
            Entry {
                fields,
                acked: false,
                rejected: false,
            },
        );
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
    pub fn judge<'a>(
        &self,
        observed: impl IntoIterator<Item = &'a Map<String, Value>>,
    ) -> DataCounts {
        let mut seen: HashMap<&str, (u64, bool)> = HashMap::new();
        for record in observed {
            let Some(key) = key_of(record, &self.key_field) else {
                continue;
            };
            let Some((stored_key, entry)) = self.entries.get_key_value(key.as_str()) else {
                continue;
            };
            let altered = entry
                .fields
                .iter()
                .any(|(name, h)| record.get(name.as_ref()).map(hash) != Some(*h));
            let slot = seen.entry(stored_key.as_str()).or_insert((0, false));
            slot.0 += 1;
            slot.1 |= altered;
        }
        let mut counts = DataCounts {
            sent: self.entries.len() as u64,
            ..Default::default()
        };
        for (key, entry) in &self.entries {
            if entry.acked {
                counts.acked += 1;
            }
            if entry.rejected {
                counts.rejected_valid += 1;
            }
            match seen.get(key.as_str()) {
                None if entry.acked => counts.lost += 1,
                None => {}
                Some((n, altered)) => {
                    if *n > 1 {
                        counts.duplicated += 1;
                    }
                    if *altered {
                        counts.corrupted += 1;
                    }
                }
            }
        }
        counts
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
            ledger.sent(id, &rec(json!({"id": id, "amount": 1.5, "tags": ["x"]})));
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
        let counts = ledger.judge(output.iter());
        assert_eq!(
            counts,
            DataCounts {
                sent: 5,
                acked: 4,
                lost: 1,
                duplicated: 1,
                corrupted: 1,
                rejected_valid: 1
            }
        );
    }

    #[test]
    fn a_missing_field_is_corruption() {
        let mut ledger = Ledger::new("id");
        ledger.sent("a", &rec(json!({"id": "a", "city": "Oslo"})));
        ledger.acked("a");
        let counts = ledger.judge([rec(json!({"id": "a"}))].iter());
        assert_eq!(counts.corrupted, 1);
        assert_eq!(counts.lost, 0);
    }

    #[test]
    fn unacknowledged_and_absent_is_not_lost() {
        let mut ledger = Ledger::new("id");
        ledger.sent("a", &rec(json!({"id": "a"})));
        let counts = ledger.judge(std::iter::empty());
        assert_eq!(counts.lost, 0);
        assert_eq!(counts.acked, 0);
    }
}
