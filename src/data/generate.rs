//! The seeded record generator.
//!
//! Record `n` of a seed is always the same bytes, and can be made without the `n`
//! before it: each record draws from its own random stream (xoshiro256++, a fixed
//! algorithm, so it does not change with the `rand` version's default), seeded from the
//! run's seed and `n`. That is what lets load workers each make a disjoint share of the
//! records a single run would send, without making the rest.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use fake::Fake;
use fake::faker::address::en::{CityName, CountryName, StreetName, ZipCode};
use fake::faker::company::en::CompanyName;
use fake::faker::currency::en::CurrencyCode;
use fake::faker::internet::en::{FreeEmail, IPv4, SafeEmail, UserAgent, Username};
use fake::faker::lorem::en::{Sentence, Word};
use fake::faker::name::en::{FirstName, LastName, Name};
use fake::faker::phone_number::en::PhoneNumber;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde_json::{Map, Number, Value};

use super::schema::{FakeKind, FieldKind, Schema};

/// Turns a schema and a seed into records.
pub struct Generator {
    schema: Arc<Schema>,
    seed: u64,
    rng: Xoshiro256PlusPlus,
    zipfs: Vec<Option<Zipf<f64>>>,
    index: u64,
}

impl Generator {
    /// A generator whose records depend only on `schema` and `seed`.
    pub fn new(schema: Arc<Schema>, seed: u64) -> Self {
        let zipfs = schema
            .fields
            .iter()
            .map(|f| match f.kind {
                FieldKind::Zipf { min, max, exponent } => Zipf::new((max - min + 1).max(1) as f64, exponent).ok(),
                _ => None,
            })
            .collect();
        Generator { schema, seed, rng: Xoshiro256PlusPlus::seed_from_u64(seed), zipfs, index: 0 }
    }

    /// The schema this generator follows.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The next record: record 0 first, then the one after the last made.
    pub fn next_record(&mut self) -> Map<String, Value> {
        let record = self.record(self.index);
        self.index += 1;
        record
    }

    /// Record number `n`.
    pub fn record(&mut self, n: u64) -> Map<String, Value> {
        self.index = n;
        self.rng = Xoshiro256PlusPlus::seed_from_u64(xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), self.seed));
        let mut record = Map::new();
        let schema = Arc::clone(&self.schema);
        for (i, field) in schema.fields.iter().enumerate() {
            let value = self.value(i, &field.kind);
            record.insert(field.name.clone(), value);
        }
        record
    }

    fn value(&mut self, field: usize, kind: &FieldKind) -> Value {
        let rng = &mut self.rng;
        match kind {
            FieldKind::Uuid => {
                let bytes: [u8; 16] = rng.random();
                Value::String(uuid::Builder::from_random_bytes(bytes).into_uuid().to_string())
            }
            FieldKind::Bool => Value::Bool(rng.random()),
            FieldKind::Sequence { start } => Value::from(start + self.index as i64),
            FieldKind::Int { min, max } => Value::from(rng.random_range(*min..=*max)),
            FieldKind::Zipf { min, max, .. } => {
                let rank = match &self.zipfs[field] {
                    Some(z) => z.sample(rng) as i64,
                    None => 1,
                };
                Value::from((min + rank - 1).min(*max))
            }
            FieldKind::Decimal { min, max, scale } => {
                let factor = 10f64.powi(*scale as i32);
                let lo = (min * factor).ceil() as i64;
                let hi = (max * factor).floor() as i64;
                let units = if lo <= hi { rng.random_range(lo..=hi) } else { lo };
                Number::from_f64(units as f64 / factor).map_or(Value::Null, Value::Number)
            }
            FieldKind::Timestamp { start, step_micros } => {
                let jitter = if *step_micros > 0 { rng.random_range(0..*step_micros) } else { 0 };
                let micros = self.index.saturating_mul(*step_micros).saturating_add(jitter);
                // The scenario's check keeps a run inside year 9999; `stagegate data` asked
                // for more stops there rather than print a time RFC 3339 cannot write.
                let last = DateTime::<Utc>::from_naive_utc_and_offset(
                    chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
                        .and_then(|d| d.and_hms_milli_opt(23, 59, 59, 999))
                        .unwrap_or_default(),
                    Utc,
                );
                let t = i64::try_from(micros)
                    .ok()
                    .map(TimeDelta::microseconds)
                    .and_then(|span| start.checked_add_signed(span))
                    .map_or(last, |t| t.min(last));
                Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true))
            }
            FieldKind::OneOf { values, cumulative } => {
                let u: f64 = rng.random();
                let i = cumulative.iter().position(|c| u < *c).unwrap_or(values.len() - 1);
                values[i].clone()
            }
            FieldKind::Fake(f) => Value::String(fake(*f, rng)),
        }
    }
}

fn fake(kind: FakeKind, rng: &mut Xoshiro256PlusPlus) -> String {
    match kind {
        FakeKind::Name => Name().fake_with_rng(rng),
        FakeKind::FirstName => FirstName().fake_with_rng(rng),
        FakeKind::LastName => LastName().fake_with_rng(rng),
        FakeKind::SafeEmail => SafeEmail().fake_with_rng(rng),
        FakeKind::FreeEmail => FreeEmail().fake_with_rng(rng),
        FakeKind::Username => Username().fake_with_rng(rng),
        FakeKind::City => CityName().fake_with_rng(rng),
        FakeKind::Country => CountryName().fake_with_rng(rng),
        FakeKind::StreetName => StreetName().fake_with_rng(rng),
        FakeKind::ZipCode => ZipCode().fake_with_rng(rng),
        FakeKind::PhoneNumber => PhoneNumber().fake_with_rng(rng),
        FakeKind::CompanyName => CompanyName().fake_with_rng(rng),
        FakeKind::Word => Word().fake_with_rng(rng),
        FakeKind::Sentence => Sentence(3..9).fake_with_rng(rng),
        FakeKind::Ipv4 => IPv4().fake_with_rng(rng),
        FakeKind::UserAgent => UserAgent().fake_with_rng(rng),
        FakeKind::CurrencyCode => CurrencyCode().fake_with_rng(rng),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const ORDERS: &str = "name: orders\nkey: order_id\nfields:\n  order_id: { type: uuid }\n  customer: { fake: name }\n  email: { fake: safe_email, pii: true }\n  customer_id: { type: int, min: 1, max: 100000, distribution: zipf, exponent: 1.1 }\n  amount: { type: decimal, min: 1.00, max: 500.00, scale: 2 }\n  currency: { one_of: [USD, EUR, GBP], weights: [70, 20, 10] }\n  items: { type: int, min: 1, max: 10 }\n  created_at: { type: timestamp }\n";

    fn records(seed: u64, n: usize) -> Vec<String> {
        let schema = Arc::new(Schema::parse(Path::new("orders.yaml"), ORDERS).unwrap());
        let mut g = Generator::new(schema, seed);
        (0..n).map(|_| Value::Object(g.next_record()).to_string()).collect()
    }

    #[test]
    fn same_seed_gives_byte_identical_records() {
        assert_eq!(records(42, 200), records(42, 200));
        assert_ne!(records(42, 5), records(43, 5));
    }

    #[test]
    fn any_record_can_be_made_alone() {
        let schema = Arc::new(Schema::parse(Path::new("orders.yaml"), ORDERS).unwrap());
        let in_order = records(42, 50);
        let mut g = Generator::new(schema, 42);
        for n in [49u64, 3, 17, 0] {
            assert_eq!(Value::Object(g.record(n)).to_string(), in_order[n as usize]);
        }
    }

    #[test]
    fn values_respect_their_generators() {
        let schema = Arc::new(Schema::parse(Path::new("orders.yaml"), ORDERS).unwrap());
        let mut g = Generator::new(schema, 7);
        let mut usd = 0;
        let mut keys = std::collections::HashSet::new();
        for _ in 0..5000 {
            let r = g.next_record();
            let amount = r["amount"].as_f64().unwrap();
            assert!((1.0..=500.0).contains(&amount));
            assert_eq!((amount * 100.0).round() / 100.0, amount);
            let items = r["items"].as_i64().unwrap();
            assert!((1..=10).contains(&items));
            let cid = r["customer_id"].as_i64().unwrap();
            assert!((1..=100_000).contains(&cid));
            assert!(r["email"].as_str().unwrap().contains('@'));
            usd += (r["currency"] == "USD") as u32;
            assert!(keys.insert(r["order_id"].as_str().unwrap().to_string()));
        }
        // 70% weight: allow a wide band, the point is that weights are honoured.
        assert!((3200..3800).contains(&usd), "{usd}");
    }

    #[test]
    fn zipf_favours_low_ranks() {
        let schema = Arc::new(Schema::parse(Path::new("orders.yaml"), ORDERS).unwrap());
        let mut g = Generator::new(schema, 3);
        let ones = (0..2000).filter(|_| g.next_record()["customer_id"] == 1).count();
        assert!(ones > 100, "rank 1 should be the most common, got {ones}/2000");
    }

    #[test]
    fn timestamps_advance_with_the_record_index() {
        let schema = Arc::new(Schema::parse(Path::new("orders.yaml"), ORDERS).unwrap());
        let mut g = Generator::new(schema, 1);
        let a = g.next_record()["created_at"].as_str().unwrap().to_string();
        let b = g.next_record()["created_at"].as_str().unwrap().to_string();
        assert!(a.starts_with("2026-01-01T00:00:00."), "{a}");
        assert!(a < b, "{a} !< {b}");
    }
}
