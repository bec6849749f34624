//! Data quality: the ledger of what was sent and acknowledged, and the counts that
//! compare it with what the system under test actually produced.
//!
//! The [`Ledger`] keeps, per record key, a hash of each field's value as sent, the
//! record's breakdown [`Tags`], and what the output showed of it (copies seen, altered,
//! personal data exposed, first sighting); it never keeps the records themselves.
//! Observers feed it the output record by record; [`Ledger::judge`] counts lost,
//! duplicated and corrupted records, for the whole stage and by phase and flag variant.
//! Fetching the output is the observers' business (see [`crate::sut::observe`]); this
//! file only compares.

pub mod freshness;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::time::Instant;
use xxhash_rust::xxh3::xxh3_64;

use crate::measure::Phase;

/// Data-quality counts of one stage (or one slice of it). See the scenario format.
/// When the output was not seen, the counts that need it are unknown, and written as
/// `null` (never as a count that looks measured).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
    /// Set when the output was not seen: the counts above that need it are unknown.
    pub unobserved: bool,
}

impl Serialize for DataCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let known = |v: u64| (!self.unobserved).then_some(v);
        let mut st = s.serialize_struct("DataCounts", 8)?;
        st.serialize_field("sent", &self.sent)?;
        st.serialize_field("acked", &self.acked)?;
        st.serialize_field("lost", &known(self.lost))?;
        st.serialize_field("duplicated", &known(self.duplicated))?;
        st.serialize_field("corrupted", &known(self.corrupted))?;
        st.serialize_field("rejected_valid", &self.rejected_valid)?;
        st.serialize_field("accepted_invalid", &known(self.accepted_invalid))?;
        st.serialize_field("pii_exposed", &known(self.pii_exposed))?;
        st.end()
    }
}

/// The shape [`DataCounts`] is written in: the counts that need the output are `null`
/// when it was not seen.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
struct DataCountsShape {
    /// Records sent.
    sent: u64,
    /// Records the target acknowledged.
    acked: u64,
    /// Acknowledged records missing from the output.
    lost: Option<u64>,
    /// Records found in the output more than once.
    duplicated: Option<u64>,
    /// Records found altered in the output.
    corrupted: Option<u64>,
    /// Valid records the target refused.
    rejected_valid: u64,
    /// Records sent invalid on purpose that were acknowledged or reached the output.
    accepted_invalid: Option<u64>,
    /// Records whose personal data appears unmasked in the output.
    pii_exposed: Option<u64>,
}

impl schemars::JsonSchema for DataCounts {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DataCounts".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        DataCountsShape::json_schema(generator)
    }
}

impl DataCounts {
    fn add(&mut self, o: &DataCounts) {
        self.unobserved |= o.unobserved;
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
    /// The interval of the stage's time series it was due in.
    pub interval: Option<u32>,
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
    /// By interval of the stage's time series (warm-up included).
    pub by_interval: Vec<DataCounts>,
    /// Whether the output was observed at all (without it, lost and the like are unknown).
    pub observed: bool,
    /// Items of the output that could not be read as records and named no sent key
    /// (each is also counted in `total.corrupted`).
    pub unreadable: u64,
}

#[derive(Debug)]
struct Entry {
    /// The names of the fields sent (shared by every record with the same fields).
    names: Arc<[Arc<str>]>,
    /// The hash of each field's canonical JSON, in the order of `names`.
    hashes: Box<[u64]>,
    /// Hashes of the values of its `pii` fields.
    pii: Box<[u64]>,
    acked: bool,
    rejected: bool,
    tags: Tags,
    /// When it was acknowledged, for freshness.
    acked_at: Option<Instant>,
    /// When it was first seen in the output.
    first_seen: Option<Instant>,
    /// Copies seen in the current look at the output.
    seen: u32,
    /// Whether a copy seen differs from what was sent (or could not be read).
    altered: bool,
    /// Whether a copy seen shows a `pii` value unmasked.
    exposed: bool,
}

impl Judgement {
    /// The same counts, marked unknown where they need the output (it was not seen).
    pub fn unobserved(mut self) -> Judgement {
        self.observed = false;
        self.total.unobserved = true;
        self.warmup.unobserved = true;
        self.by_phase.iter_mut().for_each(|c| c.unobserved = true);
        self.by_variant.values_mut().for_each(|c| c.unobserved = true);
        self
    }
}

/// What was sent in one stage, by record key, and what of it the output showed.
///
/// The driver notes each record sent, acknowledged or refused; an observer notes each
/// record of the output as it reads it ([`Ledger::observe`]), so nothing the output holds
/// is kept beyond a few counters per sent key: a flood of output costs time, not memory.
#[derive(Debug, Default)]
pub struct Ledger {
    key_field: String,
    entries: HashMap<String, Entry>,
    names: HashMap<String, Arc<str>>,
    /// The field-name lists of the records sent so far (nearly always one).
    layouts: Vec<Arc<[Arc<str>]>>,
    pii_fields: Vec<String>,
    /// Output field names, by the sent field they carry (`target.http.renamed`).
    renamed: BTreeMap<String, String>,
    /// Unreadable output items that name no sent key, in the current look.
    unreadable: u64,
    /// Output records seen before their record was known here, kept for a while (a
    /// distributed run learns of a record sent a moment after the system may store
    /// it): by key, with when and in which look they were seen; `None` when not kept.
    early: Option<Early>,
    /// Looks begun so far.
    looks: u64,
}

/// Output records whose key was not (yet) known, oldest first, at most [`MAX_EARLY`].
#[derive(Debug, Default)]
struct Early {
    by_key: HashMap<String, (Map<String, Value>, Instant, u64)>,
    order: std::collections::VecDeque<String>,
}

/// Early sightings kept at most; past it the oldest go (most likely other stages'
/// records, which a listing shows too).
pub const MAX_EARLY: usize = 50_000;

/// A stage's ledger, shared by the driver's accounting and the observer.
pub type SharedLedger = Arc<Mutex<Ledger>>;

/// Hash of a JSON value's canonical text (object keys sorted).
fn hash(value: &Value) -> u64 {
    // Streamed into the hasher: the same bytes as `value.to_string()`, without making
    // the string (this runs for every field of every record sent).
    struct Into(xxhash_rust::xxh3::Xxh3);
    impl std::io::Write for Into {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.update(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut into = Into(xxhash_rust::xxh3::Xxh3::new());
    match serde_json::to_writer(&mut into, value) {
        Ok(()) => into.0.digest(),
        Err(_) => xxh3_64(value.to_string().as_bytes()),
    }
}

/// The hash the ledger keeps of a value: values seen elsewhere (an evaluation
/// context) are matched against sent records by it.
pub fn value_hash(value: &Value) -> u64 {
    hash(value)
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

/// What the ledger keeps of a sent record: each field's name and value hash, and the
/// hashes of its `pii` string values. Small enough to travel from a load worker to the
/// controller in place of the record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Digest {
    pub fields: Vec<(String, u64)>,
    pub pii: Vec<u64>,
}

/// The [`Digest`] of `record`, watching `pii_fields`.
pub fn digest(record: &Map<String, Value>, pii_fields: &[String]) -> Digest {
    Digest {
        fields: record.iter().map(|(name, value)| (name.clone(), hash(value))).collect(),
        pii: pii_fields.iter().filter_map(|f| record.get(f)).filter(|v| v.is_string()).map(hash).collect(),
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

/// The key an unreadable output item names, if its text still shows
/// `"<key_field>": <value>` (a record cut short, or stored with broken JSON).
pub fn salvage_key(raw: &str, key_field: &str) -> Option<String> {
    let marker = format!("\"{key_field}\"");
    let at = raw.find(&marker)? + marker.len();
    let rest = raw[at..].trim_start().strip_prefix(':')?.trim_start();
    if let Some(quoted) = rest.strip_prefix('"') {
        let end = quoted.find('"')?;
        Some(quoted[..end].to_string())
    } else {
        let end = rest.find(|c: char| c == ',' || c == '}' || c == ']' || c.is_whitespace()).unwrap_or(rest.len());
        (end > 0).then(|| rest[..end].to_string())
    }
}

/// Puts the sent field names back on an output record (`renamed` maps sent name to
/// output name); fields the system under test added stay as they are.
pub fn rename_back(record: &mut Map<String, Value>, renamed: &BTreeMap<String, String>) {
    for (sent, output) in renamed {
        if let Some(v) = record.remove(output) {
            record.insert(sent.clone(), v);
        }
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

    /// Reads output records under the sent names (`renamed` maps sent to output name).
    pub fn with_renamed(mut self, renamed: BTreeMap<String, String>) -> Self {
        self.renamed = renamed;
        self
    }

    /// Keeps output records seen before their record is known, and applies them when it
    /// is (for records whose digest arrives from a load worker after the system under
    /// test has already stored them).
    pub fn with_early_sightings(mut self) -> Self {
        self.early = Some(Early::default());
        self
    }

    /// This ledger, shared.
    pub fn shared(self) -> SharedLedger {
        Arc::new(Mutex::new(self))
    }

    /// Notes that `record` was sent, with its breakdown tags.
    pub fn sent(&mut self, key: &str, record: &Map<String, Value>, tags: Tags) {
        let digest = digest(record, &self.pii_fields);
        self.sent_digest(key, digest, tags);
    }

    /// The `pii` fields watched.
    pub fn pii_fields(&self) -> &[String] {
        &self.pii_fields
    }

    /// Notes that a record was sent, from its [`Digest`] (made where it was sent: a
    /// load worker).
    pub fn sent_digest(&mut self, key: &str, digest: Digest, tags: Tags) {
        let names = self.layout(&digest.fields);
        let hashes = digest.fields.iter().map(|(_, h)| *h).collect();
        let entry = Entry {
            names,
            hashes,
            pii: digest.pii.into_boxed_slice(),
            acked: false,
            rejected: false,
            tags,
            acked_at: None,
            first_seen: None,
            seen: 0,
            altered: false,
            exposed: false,
        };
        self.entries.insert(key.to_string(), entry);
        // Seen in the output before it was known here: first seen then; and counted if
        // that was in the current look (a later look sees it again by itself).
        if let Some((record, at, look)) = self.early.as_mut().and_then(|e| e.by_key.remove(key)) {
            if look == self.looks {
                self.observe(record, at);
            } else if let Some(e) = self.entries.get_mut(key) {
                e.first_seen.get_or_insert(at);
            }
        }
    }

    /// The shared name list for `fields`' names (made once per distinct list).
    fn layout(&mut self, fields: &[(String, u64)]) -> Arc<[Arc<str>]> {
        let same = |l: &Arc<[Arc<str>]>| l.len() == fields.len() && l.iter().zip(fields).all(|(a, (b, _))| **a == **b);
        if let Some(l) = self.layouts.iter().rev().find(|l| same(l)) {
            return l.clone();
        }
        let names: Arc<[Arc<str>]> = fields
            .iter()
            .map(|(name, _)| self.names.entry(name.clone()).or_insert_with(|| Arc::from(name.as_str())).clone())
            .collect();
        // Records with ever new field lists (a malformed stream) do not grow this forever.
        if self.layouts.len() >= 64 {
            self.layouts.remove(0);
        }
        self.layouts.push(names.clone());
        names
    }

    /// Of `hashes`, those that are the value of a `pii` field of a record sent, each
    /// with that field's name.
    pub fn pii_matches(&self, hashes: &HashSet<u64>) -> HashMap<u64, Arc<str>> {
        let mut out = HashMap::new();
        if self.pii_fields.is_empty() || hashes.is_empty() {
            return out;
        }
        for entry in self.entries.values() {
            for (name, h) in entry.names.iter().zip(entry.hashes.iter()) {
                if hashes.contains(h) && self.pii_fields.iter().any(|f| f.as_str() == &**name) {
                    out.insert(*h, name.clone());
                }
            }
        }
        out
    }

    /// Notes that the record with `key` was acknowledged at `at`.
    pub fn acked(&mut self, key: &str, at: Instant) {
        if let Some(e) = self.entries.get_mut(key) {
            e.acked = true;
            e.acked_at.get_or_insert(at);
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

    /// Starts a new look at the whole output (a scan lists all of it again): the copies
    /// seen are counted afresh; first sightings are kept.
    pub fn begin_look(&mut self) {
        self.looks += 1;
        for e in self.entries.values_mut() {
            e.seen = 0;
            e.altered = false;
            e.exposed = false;
        }
        self.unreadable = 0;
    }

    /// Notes one record of the output, seen at `at`. A record whose key was not sent in
    /// this stage is ignored (it belongs to another stage).
    pub fn observe(&mut self, mut record: Map<String, Value>, at: Instant) {
        if !self.renamed.is_empty() {
            rename_back(&mut record, &self.renamed);
        }
        let Some(key) = key_of(&record, &self.key_field) else { return };
        let Some(entry) = self.entries.get_mut(key.as_str()) else {
            if let Some(early) = &mut self.early
                && !early.by_key.contains_key(&key)
            {
                if early.order.len() >= MAX_EARLY
                    && let Some(old) = early.order.pop_front()
                {
                    early.by_key.remove(&old);
                }
                early.order.push_back(key.clone());
                early.by_key.insert(key, (record, at, self.looks));
            }
            return;
        };
        let altered = entry
            .names
            .iter()
            .zip(entry.hashes.iter())
            .any(|(name, h)| record.get(name.as_ref()).map(hash) != Some(*h));
        if !entry.pii.is_empty() && record.values().any(|v| leaks(v, &entry.pii)) {
            entry.exposed = true;
        }
        entry.seen = entry.seen.saturating_add(1);
        entry.altered |= altered;
        entry.first_seen.get_or_insert(at);
    }

    /// Notes one item of the output that is not a readable record (`raw` is its text, or
    /// its beginning). It is a finding about the system under test, not a reason to stop
    /// looking: the sent key it names (`key`, or found in its text) counts as seen with
    /// altered content; one naming no sent key counts as corrupted output of the stage.
    pub fn observe_unreadable(&mut self, raw: &str, key: Option<&str>, at: Instant) {
        let key = key.map(str::to_string).or_else(|| salvage_key(raw, &self.key_field));
        match key.and_then(|k| self.entries.get_mut(k.as_str())) {
            Some(entry) => {
                entry.seen = entry.seen.saturating_add(1);
                entry.altered = true;
                entry.first_seen.get_or_insert(at);
            }
            None => self.unreadable += 1,
        }
    }

    /// Whether every acknowledged record has shown in the output.
    pub fn all_acked_seen(&self) -> bool {
        self.entries.values().all(|e| !e.acked || e.first_seen.is_some())
    }

    /// `(acknowledged, first seen)` of every judged record seen after being acknowledged
    /// (or before: then it is fresh at zero).
    pub fn arrivals(&self) -> Vec<(Instant, Instant)> {
        self.entries.values().filter(|e| !e.tags.warmup).filter_map(|e| Some((e.acked_at?, e.first_seen?))).collect()
    }

    /// Compares what was sent with what the output showed.
    pub fn judge(&self) -> Judgement {
        let mut judgement = Judgement { observed: true, unreadable: self.unreadable, ..Default::default() };
        judgement.total.corrupted += self.unreadable;
        for entry in self.entries.values() {
            let mut c = DataCounts { sent: 1, acked: entry.acked as u64, ..Default::default() };
            c.pii_exposed = entry.exposed as u64;
            let seen = entry.seen > 0;
            if entry.tags.invalid {
                c.accepted_invalid = (entry.acked || seen) as u64;
            } else {
                c.rejected_valid = entry.rejected as u64;
                if seen {
                    c.duplicated = (entry.seen > 1) as u64;
                    c.corrupted = entry.altered as u64;
                } else {
                    c.lost = entry.acked as u64;
                }
            }
            if let Some(i) = entry.tags.interval.map(|i| i as usize)
                && i < crate::measure::series::MAX_POINTS as usize
            {
                if judgement.by_interval.len() <= i {
                    judgement.by_interval.resize(i + 1, DataCounts::default());
                }
                judgement.by_interval[i].add(&c);
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

    fn now() -> Instant {
        Instant::now()
    }

    /// Feeds `output` to the ledger as an observer would, then judges.
    fn judge(ledger: &mut Ledger, output: impl IntoIterator<Item = Map<String, Value>>) -> Judgement {
        for r in output {
            ledger.observe(r, now());
        }
        ledger.judge()
    }

    #[test]
    fn a_record_stored_before_its_digest_arrives_is_counted_once_and_first_seen_when_stored() {
        let mut ledger = Ledger::new("id").with_early_sightings();
        let t0 = Instant::now();
        let record = rec(json!({"id": "a", "amount": 1.5}));
        // Pushed by the system (one look for the whole stage), then learned of.
        ledger.observe(record.clone(), t0);
        ledger.sent_digest("a", digest(&record, &[]), Tags::default());
        ledger.acked("a", t0);
        let j = ledger.judge();
        assert_eq!((j.total.lost, j.total.duplicated, j.total.corrupted), (0, 0, 0));
        assert_eq!(ledger.arrivals(), vec![(t0, t0)]);
        // Seen early in a look that is over: first seen then, counted by the next look.
        let mut ledger = Ledger::new("id").with_early_sightings();
        ledger.begin_look();
        ledger.observe(record.clone(), t0);
        ledger.begin_look();
        ledger.sent_digest("a", digest(&record, &[]), Tags::default());
        ledger.acked("a", t0);
        ledger.observe(record.clone(), t0 + std::time::Duration::from_secs(1));
        let j = ledger.judge();
        assert_eq!((j.total.lost, j.total.duplicated), (0, 0));
        assert_eq!(ledger.arrivals(), vec![(t0, t0)]);
    }

    #[test]
    fn value_hashes_are_those_of_the_canonical_text() {
        for v in [json!(null), json!("ü\n\"q\""), json!(12.5), json!({"b": [1, {"z": true}], "a": "x"})] {
            assert_eq!(hash(&v), xxh3_64(v.to_string().as_bytes()), "{v}");
        }
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
            ledger.acked(id, now());
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
        let judged = judge(&mut ledger, output);
        let expected = DataCounts {
            sent: 5,
            acked: 4,
            lost: 1,
            duplicated: 1,
            corrupted: 1,
            rejected_valid: 1,
            accepted_invalid: 0,
            pii_exposed: 0,
            unobserved: false,
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
        ledger.acked("a", now());
        let counts = judge(&mut ledger, [rec(json!({"id": "a"}))]).total;
        assert_eq!(counts.corrupted, 1);
        assert_eq!(counts.lost, 0);
    }

    #[test]
    fn unacknowledged_and_absent_is_not_lost() {
        let mut ledger = Ledger::new("id");
        ledger.sent("a", &rec(json!({"id": "a"})), Tags::default());
        let counts = judge(&mut ledger, []).total;
        assert_eq!(counts.lost, 0);
        assert_eq!(counts.acked, 0);
    }

    #[test]
    fn personal_data_in_the_output_is_counted() {
        let mut ledger = Ledger::new("id").with_pii(["email".to_string()]);
        for id in ["a", "b", "c"] {
            ledger.sent(id, &rec(json!({"id": id, "email": format!("{id}@example.com")})), Tags::default());
            ledger.acked(id, now());
        }
        let output = [
            rec(json!({"id": "a", "email": "a@example.com"})),
            rec(json!({"id": "b", "email": "b***@example.com", "note": {"raw": ["b@example.com"]}})),
            rec(json!({"id": "c", "email": "c***@example.com"})),
        ];
        let counts = judge(&mut ledger, output).total;
        assert_eq!(counts.pii_exposed, 2, "unmasked at top level and nested");
        assert_eq!(counts.corrupted, 2, "masking changes a sent field");
    }

    #[test]
    fn warmup_records_are_counted_apart() {
        let mut ledger = Ledger::new("id");
        ledger.sent("w", &rec(json!({"id": "w"})), Tags { warmup: true, ..Default::default() });
        ledger.sent("j", &rec(json!({"id": "j"})), Tags::default());
        ledger.acked("w", now());
        ledger.acked("j", now());
        let judged = judge(&mut ledger, []);
        assert_eq!((judged.total.sent, judged.total.lost), (1, 1));
        assert_eq!((judged.warmup.sent, judged.warmup.lost), (1, 1));
    }

    #[test]
    fn invalid_records_must_be_refused() {
        let mut ledger = Ledger::new("id");
        let invalid = Tags { invalid: true, ..Default::default() };
        ledger.sent("a", &rec(json!({"id": "a"})), invalid.clone());
        ledger.sent("b", &rec(json!({"id": "b"})), invalid);
        ledger.acked("a", now());
        ledger.rejected("b");
        let counts = judge(&mut ledger, [rec(json!({"id": "a"}))]).total;
        assert_eq!(counts.accepted_invalid, 1);
        assert_eq!(counts.rejected_valid, 0);
        assert_eq!(counts.lost, 0);
    }

    /// Regression: one stored record that is not valid JSON used to blind the run to the
    /// whole output for every later stage; it is a finding about the system instead.
    #[test]
    fn an_unreadable_output_item_is_counted_not_a_reason_to_stop_looking() {
        let mut ledger = Ledger::new("order_id");
        for id in ["a", "b", "c"] {
            ledger.sent(id, &rec(json!({"order_id": id, "n": 1})), Tags::default());
            ledger.acked(id, now());
        }
        ledger.observe(rec(json!({"order_id": "a", "n": 1})), now());
        // b was stored cut short; its key still shows in the text.
        ledger.observe_unreadable(r#"{"order_id": "b", "n": 1"#, None, now());
        // Something unreadable that names no sent key.
        ledger.observe_unreadable("\u{0}garbage", None, now());
        let j = ledger.judge();
        assert_eq!(j.total.lost, 1, "c is lost; b was seen");
        assert_eq!(j.total.corrupted, 2, "b altered, and the garbage");
        assert_eq!(j.unreadable, 1);
        assert!(j.observed);
    }

    #[test]
    fn keys_are_salvaged_from_broken_records() {
        assert_eq!(salvage_key(r#"{"order_id": "k-1", "amount": "#, "order_id").as_deref(), Some("k-1"));
        assert_eq!(salvage_key(r#"{"id":42,"x":}"#, "id").as_deref(), Some("42"));
        assert_eq!(salvage_key("not json at all", "id"), None);
    }

    #[test]
    fn a_new_look_counts_copies_afresh_but_keeps_first_sightings() {
        let mut ledger = Ledger::new("id");
        ledger.sent("a", &rec(json!({"id": "a"})), Tags::default());
        ledger.acked("a", now());
        let first = now();
        ledger.observe(rec(json!({"id": "a"})), first);
        ledger.begin_look();
        ledger.observe(rec(json!({"id": "a"})), now());
        assert_eq!(ledger.judge().total.duplicated, 0, "the same copy listed twice is one copy");
        assert_eq!(ledger.arrivals()[0].1, first);
        assert!(ledger.all_acked_seen());
    }
}
