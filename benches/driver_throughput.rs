//! The highest arrival rate the open-model driver sustains here: it drives a minimal
//! HTTP server on loopback (201 for every POST) at an offered rate far above what it
//! can keep up with, for a few seconds, and reports the requests completed per second
//! and how late the sends ran (the latency of an instant answer, from intended time).
//!
//! `cargo bench --bench driver_throughput`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Map, Value};
use stagegate::data::Schema;
use stagegate::measure::{Outcome, Recorder};
use stagegate::quality::Judgement;
use stagegate::sut::RequestTemplate;
use stagegate::sut::http::{RECORD_JSON, WriteTemplate};
use stagegate::workload::driver::{self, HttpWrite, InputFaults, Sample, Sink};
use stagegate::workload::{Arrival, RateProfile, Workload};
use tokio_util::sync::CancellationToken;

struct Count {
    recorder: Recorder,
    ok: u64,
}

impl Sink for Count {
    fn sent(&mut self, _: Duration, _: u64, _: &str, _: &Map<String, Value>, _: bool) {}
    fn sample(&mut self, s: Sample) {
        self.ok += (s.outcome == Outcome::Acked) as u64;
        self.recorder.record(s.offset, s.latency, s.outcome, None);
    }
    fn tick(&mut self, _: Duration) {}
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/orders", post(|| async { StatusCode::CREATED }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let schema = Arc::new(Schema::load(Path::new("synthetic-data/orders.yaml")).unwrap());
        for offered in [10_000.0, 30_000.0, 60_000.0] {
            let duration = Duration::from_secs(4);
            let workload = Workload {
                schema: schema.clone(),
                data_file: "synthetic-data/orders.yaml".into(),
                arrival: Arrival::Open(RateProfile::constant(offered)),
                duration,
                warmup: Duration::from_secs(1),
                timeout: Duration::from_secs(2),
            };
            let write = HttpWrite {
                client: stagegate::http_client::builder().pool_max_idle_per_host(1024).build().unwrap(),
                base_url: format!("http://{addr}"),
                template: Arc::new(
                    WriteTemplate::compile(
                        &RequestTemplate {
                            method: "POST".into(),
                            path: "/orders".into(),
                            body: None,
                            headers: Default::default(),
                        },
                        &Default::default(),
                        Some(RECORD_JSON),
                    )
                    .unwrap(),
                ),
            };
            let mut sink = Count { recorder: Recorder::new(workload.warmup, duration, vec![]), ok: 0 };
            let started = std::time::Instant::now();
            let drive = driver::drive(
                &write,
                &workload,
                1,
                &InputFaults::default(),
                &CancellationToken::new(),
                &mut driver::StageEnd::fixed(workload.duration),
                driver::Share::WHOLE,
                &mut sink,
            )
            .await;
            let secs = started.elapsed().as_secs_f64();
            let m = sink.recorder.finish(duration, &Judgement::default());
            println!(
                "offered {offered:.0}/s: {:.0} acked/s over {secs:.1}s, {} sends dropped; latency from intended send p50 {:.1}ms p99 {:.1}ms",
                sink.ok as f64 / secs,
                drive.dropped,
                m.latency.p50.unwrap_or(0.0),
                m.latency.p99.unwrap_or(0.0)
            );
        }
    });
}
