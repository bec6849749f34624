//! The system under test: what a scenario's `target` names, and the builtin one that
//! ships inside stagegate.
//!
//! [`Target`] is the checked `target:` section. The builtin target is the reference
//! [`pipeline`] writing to the builtin [`store`]: together they let a scenario run with
//! no infrastructure at all, and they contain a real, fault-revealed difference between
//! their two flag states (see the pipeline's docs).

pub mod pipeline;
pub mod store;

use serde::Serialize;

/// The checked `target:` section.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A system under test that ships inside stagegate.
    Builtin(BuiltinTarget),
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
    pub const ALL: [(&'static str, BuiltinTarget); 1] =
        [("orders-pipeline", BuiltinTarget::OrdersPipeline)];

    /// The builtin dependency kind this target needs, and the flag it reads.
    pub fn needs(self) -> (crate::deps::BuiltinDependency, &'static str) {
        match self {
            BuiltinTarget::OrdersPipeline => {
                (crate::deps::BuiltinDependency::KvStore, pipeline::FLAG)
            }
        }
    }
}
