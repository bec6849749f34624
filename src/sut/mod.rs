//! The system under test: what a scenario's `target` names, and the builtin one that
//! ships inside stagegate.
//!
//! [`Target`] is the checked `target:` section. The builtin target is the reference
//! [`pipeline`] writing to the builtin [`store`]: together they let a scenario run with
//! no infrastructure at all, and they contain a real, fault-revealed difference between
//! their two flag states (see the pipeline's docs).

pub mod http;
pub mod observe;
pub mod pipeline;
pub mod sink;
pub mod store;

use serde::Serialize;

/// The checked `target:` section.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A system under test that ships inside stagegate.
    Builtin(BuiltinTarget, pipeline::Defects),
    /// Any HTTP service, optionally started by stagegate.
    Http(Box<HttpTarget>),
}

/// One HTTP request template, placeholders still in.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RequestTemplate {
    pub method: String,
    pub path: String,
    pub body: Option<String>,
    pub headers: std::collections::BTreeMap<String, String>,
}

/// How the whole output is listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scan {
    pub path: String,
    /// The key holding the records in an object answer.
    pub items: String,
    pub paging: Paging,
    /// How often to list the output while a stage runs (for freshness).
    #[serde(with = "crate::report::serde_opt_duration")]
    pub every: Option<std::time::Duration>,
    /// How long to keep listing after a stage until every acknowledged record shows.
    #[serde(with = "crate::report::serde_duration")]
    pub settle: std::time::Duration,
}

/// The output endpoint stagegate serves (`target.http.sink`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SinkDef {
    pub listen: String,
    pub path: String,
    #[serde(with = "crate::report::serde_duration")]
    pub settle: std::time::Duration,
}

/// How a scan pages.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Paging {
    /// One request lists everything.
    None,
    /// `?param=CURSOR`, the next cursor in the answer's `field`.
    Cursor { param: String, field: String },
    /// `?param=N` from `start`, until an empty page.
    Page { param: String, start: u64 },
}

/// The checked `target.http` (and `target.process`) section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpTarget {
    pub base_url: String,
    pub write: RequestTemplate,
    pub read: Option<RequestTemplate>,
    pub scan: Option<Scan>,
    pub sink: Option<SinkDef>,
    /// Output field names, by the sent field they carry.
    pub renamed: std::collections::BTreeMap<String, String>,
    #[serde(with = "crate::report::serde_duration")]
    pub timeout: std::time::Duration,
    pub headers: std::collections::BTreeMap<String, String>,
    pub process: Option<crate::deps::ProcessDef>,
}

/// The builtin targets, by the name a scenario uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BuiltinTarget {
    /// `orders-pipeline`: the reference order pipeline.
    #[serde(rename = "orders-pipeline")]
    OrdersPipeline,
}

impl BuiltinTarget {
    /// Every builtin target with its scenario name.
    pub const ALL: [(&'static str, BuiltinTarget); 1] = [("orders-pipeline", BuiltinTarget::OrdersPipeline)];

    /// The builtin dependency kind this target needs, and the flag it reads.
    pub fn needs(self) -> (crate::deps::BuiltinDependency, &'static str) {
        match self {
            BuiltinTarget::OrdersPipeline => (crate::deps::BuiltinDependency::KvStore, pipeline::FLAG),
        }
    }
}
