//! Synthetic records: the schema of `synthetic-data/*.yaml` and the seeded generator.
//!
//! [`Schema::load`] reads and checks a schema file; [`Generator`] turns a schema and a
//! seed into records. The same schema and seed give byte-identical records, because
//! every random choice comes from one seeded stream and objects serialise with sorted
//! keys. Arrival timing (when a record is sent) is not here: see [`crate::workload`].

mod generate;
mod schema;

pub use generate::Generator;
pub use schema::{FakeKind, Field, FieldKind, Schema};
