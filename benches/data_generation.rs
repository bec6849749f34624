//! Data generation speed: records per second from one thread, for each schema in
//! `synthetic-data/`, serialised to JSON as the driver sends them.
//!
//! `cargo bench --bench data_generation`. The figure to hold: at least ten times the
//! highest arrival rate the driver sustains here (`cargo bench --bench driver_throughput`).
//! Beside it, the raw `fake` crate making the same order by hand (same fakers, same value
//! kinds, one random stream), serialised alike: what the schema machinery costs.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake::Fake;
use fake::faker::address::en::CityName;
use fake::faker::internet::en::SafeEmail;
use fake::faker::name::en::Name;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use stagegate::data::{Generator, Schema};

/// The orders schema's record, made with `fake` and `rand` directly.
fn raw_order(rng: &mut Xoshiro256PlusPlus, n: u64) -> serde_json::Value {
    let bytes: [u8; 16] = rng.random();
    let currency = ["USD", "EUR", "GBP"][match rng.random_range(0..100) {
        0..70 => 0,
        70..90 => 1,
        _ => 2,
    }];
    let amount = rng.random_range(100..=50000) as f64 / 100.0;
    let micros = n * 1000 + rng.random_range(0..1000);
    let at = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH + chrono::TimeDelta::microseconds(micros as i64);
    serde_json::json!({
        "order_id": uuid::Builder::from_random_bytes(bytes).into_uuid().to_string(),
        "customer": Name().fake_with_rng::<String, _>(rng),
        "email": SafeEmail().fake_with_rng::<String, _>(rng),
        "city": CityName().fake_with_rng::<String, _>(rng),
        "customer_id": rng.random_range(1..=100_000),
        "amount": amount,
        "currency": currency,
        "items": rng.random_range(1..=10),
        "created_at": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

fn main() {
    let budget = Duration::from_secs(3);
    for file in ["synthetic-data/orders.yaml", "synthetic-data/clickstream.yaml"] {
        let schema = Arc::new(Schema::load(Path::new(file)).expect("the example schemas are valid"));
        let mut generator = Generator::new(schema, 42);
        let mut bytes = 0usize;
        let mut n = 0u64;
        let start = Instant::now();
        while start.elapsed() < budget {
            for _ in 0..1000 {
                let record = generator.next_record();
                bytes += serde_json::Value::Object(record).to_string().len();
            }
            n += 1000;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{file}: {:.0} records/s on one thread ({:.1} MB/s of JSON, {} records in {secs:.1}s)",
            n as f64 / secs,
            bytes as f64 / secs / 1e6,
            n
        );
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(42);
    let (mut n, mut bytes) = (0u64, 0usize);
    let start = Instant::now();
    while start.elapsed() < budget {
        for _ in 0..1000 {
            bytes += raw_order(&mut rng, n).to_string().len();
            n += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "raw fake, the same order: {:.0} records/s on one thread ({:.1} MB/s of JSON, {n} records in {secs:.1}s)",
        n as f64 / secs,
        bytes as f64 / secs / 1e6
    );
}
