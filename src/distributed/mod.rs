//! Distributed runs: one controller, many load workers, one verdict.
//!
//! `stagegate run --workers N` makes the run's process the controller. It keeps
//! everything a single-process run has (the scenario, the flags, every fault, the
//! stage timeline, the observer of the system's output, the judging) and hands out only
//! the sending: each worker (`stagegate worker`) drives a disjoint share of each stage's
//! schedule ([`crate::workload::driver::Share`]) with the same seed, so together they
//! send the records one process would have sent, and streams every record's digest and
//! every request's outcome back. The controller feeds those to the stage's accounts as
//! its own driver would, so histograms, the ledger and the data checks are the union's;
//! the workers' own interval histograms add up to the stage's.
//!
//! - [`wire`]: what they say to each other;
//! - [`controller`]: the API workers call, and a stage driven through them;
//! - [`worker`]: `stagegate worker`.

pub mod controller;
pub mod wire;
pub mod worker;

use std::time::Duration;

use crate::data::FieldKind;
use crate::runner::provision::Provisioned;
use crate::scenario::Plan;
use crate::seed;
use wire::{Assignment, RecordFault, StageAssignment};

/// The assignment every worker gets (its `worker` index set as it joins): the plan's
/// workload, where to send, and each stage's flags, seeds and record faults.
pub fn assignment(plan: &Plan, p: &Provisioned, run_id: &str, workers: u32, steered: bool) -> Assignment {
    let schema = &plan.workload.schema;
    let (write, write_headers, default_body) = p.target.write.source().clone();
    let timestamps: Vec<String> = schema
        .fields
        .iter()
        .filter(|f| matches!(f.kind, FieldKind::Timestamp { .. }))
        .map(|f| f.name.clone())
        .collect();
    let us = |d: Duration| d.as_micros() as u64;
    let stages = plan
        .stages
        .iter()
        .enumerate()
        .map(|(index, stage)| StageAssignment {
            name: stage.name.clone(),
            duration_us: us(stage.duration),
            most_us: us(if steered { stage.duration * 2 } else { stage.duration }),
            flags: stage.flags.clone(),
            data_seed: seed::derive(plan.seed, "data", index as u64),
            reorder_seed: seed::derive(plan.seed, "reorder", index as u64),
            timestamps: timestamps.clone(),
            record_faults: stage
                .faults
                .iter()
                .enumerate()
                .filter_map(|(i, f)| {
                    RecordFault::of(f, seed::derive(plan.seed, "records", (index as u64) << 32 | i as u64))
                })
                .collect(),
        })
        .collect();
    let flag_header = if p.flags.wants_values() {
        p.flags.header(&serde_json::Value::Object(Default::default())).map(|(name, _)| name)
    } else {
        None
    };
    Assignment {
        run_id: run_id.to_string(),
        scenario: plan.name.clone(),
        worker: 0,
        workers,
        session: String::new(),
        schema_file: plan.workload.data_file.display().to_string(),
        schema_text: schema.source.clone(),
        arrival: plan.workload.arrival.clone(),
        warmup_us: us(plan.workload.warmup),
        timeout_us: us(plan.workload.timeout),
        target_url: p.target.url.clone(),
        write,
        write_headers,
        default_body,
        flag_header,
        stages,
    }
}
