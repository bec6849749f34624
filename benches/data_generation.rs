//! Data generation speed: records per second from one thread, for each schema in
//! `synthetic-data/`, serialised to JSON as the driver sends them.
//!
//! `cargo bench --bench data_generation`. The figure to hold: at least ten times the
//! highest arrival rate the driver sustains here (`cargo bench --bench driver_throughput`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stagegate::data::{Generator, Schema};

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
}
