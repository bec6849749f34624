//! stagegate rehearses a release stage under chaos and returns a verdict a CI stage can
//! gate on.
//!
//! The pipeline, module by module:
//!
//! 1. [`scenario`] reads the YAML file and checks it into a [`scenario::Plan`],
//!    gathering every mistake with file, line and key path.
//! 2. [`runner`] provisions the [`flags`] endpoint, each dependency ([`deps`]) behind a
//!    [`fault`] proxy, and the system under test ([`sut`]).
//! 3. For each stage it sets the flags, plays the fault timeline, and drives the
//!    [`workload`] of synthetic records ([`data`]) at the target; [`measure`] records
//!    latency from each request's intended send time, [`quality`] keeps the ledger of
//!    what was sent and compares it with what came out.
//! 4. [`verdict`] judges each stage against the criteria and folds the assessments into
//!    PROMOTE, ROLLBACK or INCONCLUSIVE.
//! 5. [`report`] turns the runner's events into the terminal summary and a JSON file;
//!    [`exit`] maps the outcome to the process exit code.
//!
//! Whatever a run starts is adopted by its [`teardown`] guard before it starts and
//! written into `run.json` ([`deps::runfile`]); faults are lifted and everything is
//! stopped on every path, Ctrl-C, stagegate's own failures ([`health`]) and panics
//! included. Every bound on outside input lives in [`limits`]; secrets are masked in
//! everything written ([`secrets`]); every server stagegate runs stops within a
//! deadline ([`server`]).

pub mod cli;
pub mod data;
pub mod deps;
pub mod distributed;
pub mod exit;
pub mod fault;
pub mod flags;
pub mod health;
pub mod http_client;
pub mod limits;
pub mod measure;
pub mod quality;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod secrets;
pub mod seed;
pub mod server;
pub mod steer;
pub mod sut;
pub mod teardown;
pub mod threads;
pub mod verdict;
pub mod workload;
