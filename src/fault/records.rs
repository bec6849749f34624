//! Input-data faults: what the workload's faults do to one record, decided purely.
//!
//! [`RecordFaults::decide`] looks at the workload faults active at a record's intended
//! send time and draws, from each fault's own seeded stream and the record's position,
//! whether it hits this record. The helpers here turn a record into its faulted form:
//! malformed (broken JSON, a wrong type, a missing field), late (event times moved into
//! the past). Sending twice and reordering are the driver's business.

use std::time::Duration;

use serde_json::{Map, Value};

use super::{Fault, FaultKind, unit};

/// One of the ways a record is sent malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformation {
    /// The JSON is cut off mid-way.
    BrokenJson,
    /// This field carries a value of another type.
    WrongType(String),
    /// This field is left out.
    MissingField(String),
}

/// What happens to one record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordFate {
    pub malformed: Option<Malformation>,
    pub duplicate: bool,
    /// Event times moved this far into the past.
    pub late: Option<Duration>,
    /// Out of order: the window within which the record may be swapped.
    pub reorder: Option<u32>,
}

/// The workload faults of one stage, with their seeds.
#[derive(Debug, Clone, Default)]
pub struct RecordFaults {
    faults: Vec<(Fault, u64)>,
    stage: Duration,
}

impl RecordFaults {
    /// The faults of a stage of length `stage` that act on records; `seed_of(i)` gives
    /// fault `i`'s random stream.
    pub fn new(faults: &[Fault], stage: Duration, seed_of: impl Fn(usize) -> u64) -> Self {
        let faults = faults
            .iter()
            .enumerate()
            .filter(|(_, f)| f.at == super::Place::Workload)
            .map(|(i, f)| (f.clone(), seed_of(i)))
            .collect();
        RecordFaults { faults, stage }
    }

    /// The faults with their seeds, and the stage's length (to send them to a load
    /// worker).
    pub fn parts(&self) -> (&[(Fault, u64)], Duration) {
        (&self.faults, self.stage)
    }

    /// Record faults from [`RecordFaults::parts`].
    pub fn from_parts(faults: Vec<(Fault, u64)>, stage: Duration) -> Self {
        RecordFaults { faults, stage }
    }

    /// Whether any workload fault exists in the stage.
    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }

    /// Decides the fate of record number `index`, intended at `offset`; `fields` are the
    /// record's field names other than its key, to pick the one a malformation touches.
    pub fn decide(&self, offset: Duration, index: u64, fields: &[&str]) -> RecordFate {
        let mut fate = RecordFate::default();
        for (fault, seed) in &self.faults {
            if !fault.schedule.active_at(offset, self.stage) || unit(*seed, index) >= fault.probability {
                continue;
            }
            let pick = unit(seed ^ 0x5EED, index);
            match &fault.kind {
                FaultKind::Malformed => {
                    let field = || {
                        fields[((unit(seed ^ 0xF1E1D, index) * fields.len() as f64) as usize).min(fields.len() - 1)]
                            .to_string()
                    };
                    fate.malformed = Some(match (pick * 3.0) as u8 {
                        _ if fields.is_empty() => Malformation::BrokenJson,
                        0 => Malformation::BrokenJson,
                        1 => Malformation::WrongType(field()),
                        _ => Malformation::MissingField(field()),
                    });
                }
                FaultKind::Duplicate => fate.duplicate = true,
                FaultKind::Late { delay } => fate.late = Some(fate.late.map_or(*delay, |d| d.max(*delay))),
                FaultKind::OutOfOrder { window } => fate.reorder = Some(*window),
                _ => {}
            }
        }
        fate
    }
}

/// The request body of a malformed record.
pub fn malform(record: &Map<String, Value>, how: &Malformation) -> String {
    match how {
        Malformation::BrokenJson => {
            let text = Value::Object(record.clone()).to_string();
            // Cut inside the document, so no parser can read it whole.
            let cut = text.char_indices().nth(text.chars().count() / 2).map_or(0, |(i, _)| i);
            text[..cut.max(1)].to_string()
        }
        Malformation::WrongType(field) => {
            let mut r = record.clone();
            if let Some(v) = r.get_mut(field) {
                *v = match v {
                    Value::String(_) => Value::from(12345),
                    Value::Number(_) => Value::from("not-a-number"),
                    Value::Bool(_) => Value::from("yes"),
                    _ => Value::from(true),
                };
            }
            Value::Object(r).to_string()
        }
        Malformation::MissingField(field) => {
            let mut r = record.clone();
            r.remove(field);
            Value::Object(r).to_string()
        }
    }
}

/// Moves every RFC 3339 timestamp field named in `fields` `by` into the past.
pub fn make_late(record: &mut Map<String, Value>, fields: &[String], by: Duration) {
    for f in fields {
        if let Some(Value::String(text)) = record.get_mut(f)
            && let Ok(t) = chrono::DateTime::parse_from_rfc3339(text)
            && let Ok(delta) = chrono::TimeDelta::from_std(by)
            && let Some(late) = t.with_timezone(&chrono::Utc).checked_sub_signed(delta)
        {
            *text = late.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::{Direction, Place, Schedule};
    use serde_json::json;

    fn fault(kind: FaultKind, probability: f64, from_ms: u64) -> Fault {
        Fault {
            kind,
            at: Place::Workload,
            schedule: Schedule { from: Duration::from_millis(from_ms), length: None, every: None },
            probability,
            direction: Direction::Both,
            predicate: None,
        }
    }

    #[test]
    fn decisions_follow_probability_schedule_and_seed() {
        let f =
            RecordFaults::new(&[fault(FaultKind::Duplicate, 0.1, 1000)], Duration::from_secs(10), |i| 77 + i as u64);
        let early = (0..1000).filter(|i| f.decide(Duration::from_millis(500), *i, &["a"]).duplicate).count();
        assert_eq!(early, 0, "not active before `from`");
        let hits: Vec<u64> = (0..10_000).filter(|i| f.decide(Duration::from_secs(2), *i, &["a"]).duplicate).collect();
        assert!((900..1100).contains(&hits.len()), "{}", hits.len());
        let again: Vec<u64> = (0..10_000).filter(|i| f.decide(Duration::from_secs(2), *i, &["a"]).duplicate).collect();
        assert_eq!(hits, again);
    }

    #[test]
    fn every_malformation_breaks_the_record() {
        let record = json!({"id": "k", "amount": 1.5, "city": "Oslo"}).as_object().unwrap().clone();
        let broken = malform(&record, &Malformation::BrokenJson);
        assert!(serde_json::from_str::<Value>(&broken).is_err(), "{broken}");
        let wrong: Value = serde_json::from_str(&malform(&record, &Malformation::WrongType("amount".into()))).unwrap();
        assert_eq!(wrong["amount"], "not-a-number");
        let missing: Value =
            serde_json::from_str(&malform(&record, &Malformation::MissingField("city".into()))).unwrap();
        assert!(missing.get("city").is_none());
        assert_eq!(missing["id"], "k");
    }

    #[test]
    fn late_records_move_into_the_past() {
        let mut record = json!({"ts": "2026-01-01T00:10:00.000Z", "n": 1}).as_object().unwrap().clone();
        make_late(&mut record, &["ts".to_string()], Duration::from_secs(300));
        assert_eq!(record["ts"], "2026-01-01T00:05:00.000Z");
    }
}
