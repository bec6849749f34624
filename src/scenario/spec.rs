//! The raw scenario file: types that mirror the YAML, key for key.
//!
//! Nothing here is checked beyond its shape: durations, rates and checks stay the text
//! the user wrote, so that `compile` can report each mistake with its own hint. Lists
//! and maps of items (stages, faults, criteria, dependencies, flags) are held as raw
//! values and read item by item, so that one bad item does not hide the mistakes in the
//! next. The doc comments are the format's reference: `stagegate schema` prints them.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde_json::Value;

/// A number or a string, kept as text (`30s`, `200/s`, `1%`, `42`).
#[derive(Debug, Clone, PartialEq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Text(s)),
            Value::Number(n) => Ok(Text(n.to_string())),
            Value::Bool(b) => Ok(Text(b.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "expected a single value like `30s`, `200/s` or `1%`, got {other}"
            ))),
        }
    }
}

impl JsonSchema for Text {
    fn schema_name() -> Cow<'static, str> {
        "Text".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "number"] })
    }
}

/// Schema-only types: what a unit-bearing value looks like, for editors. Loading reads
/// every such value as [`Text`] and checks it with the parsers in `units`. Each pattern
/// also admits a `${...}` reference, which is replaced before the value is read.
macro_rules! text_schema {
    ($name:ident, $doc:literal, $schema:tt) => {
        #[doc = $doc]
        #[allow(dead_code)]
        pub struct $name;
        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

text_schema!(DurationText, "A duration with its unit: `250ms`, `2s`, `1m`.", {
    "type": "string",
    "pattern": "^\\s*([0-9]+(\\.[0-9]+)?\\s*(ns|us|µs|ms|s|sec|m|min|h)\\s*)+$|\\$\\{"
});
text_schema!(RateText, "Events per unit of time: `200/s`, `12000/m`.", {
    "type": "string",
    "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*/\\s*(ms|s|m|min|h)\\s*$|\\$\\{"
});
text_schema!(FractionText, "A share: `1%`, `0.5%` or a number from 0 to 1.", {
    "anyOf": [
        { "type": "string", "pattern": "^\\s*(100(\\.0+)?|[0-9]{1,2}(\\.[0-9]+)?)\\s*%\\s*$|\\$\\{" },
        { "type": "number", "minimum": 0, "maximum": 1 }
    ]
});
text_schema!(ToleranceText, "An allowed regression: relative (`10%`) or, for latency, absolute (`+5ms`).", {
    "anyOf": [
        { "type": "string", "pattern": "^\\s*(100(\\.0+)?|[0-9]{1,2}(\\.[0-9]+)?)\\s*%\\s*$|^\\s*\\+?\\s*[0-9]+(\\.[0-9]+)?\\s*(us|µs|ms|s)\\s*$|\\$\\{" },
        { "type": "number", "minimum": 0, "maximum": 1 }
    ]
});
text_schema!(ByteRateText, "Bytes per second: `64KB/s`, `1MB/s`, `512B/s`, `1MiB/s`.", {
    "type": "string",
    "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*(B|KB|MB|GB|KiB|MiB)/s\\s*$|\\$\\{"
});
text_schema!(DateText, "A date: `2027-03-01`.", {
    "type": "string",
    "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
});

/// The whole scenario file (format version 1). `compile` reads the top-level keys one
/// by one (so a mistake in one does not hide the others); this struct gives the JSON
/// Schema its shape and documents each key.
#[derive(Debug, Deserialize, JsonSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    /// Format version; must be `1`.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// Scenario name: letters, digits, `-`, `_`, `.`; used in report folder names.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$"))]
    pub name: String,
    /// One line on what the rehearsal decides.
    #[serde(default)]
    pub description: Option<String>,
    /// Seed of every random choice (data, pacing, fault decisions, flag bucketing).
    /// Default: a random seed, printed in every report. `--seed` overrides it.
    #[serde(default)]
    pub seed: Option<u64>,
    /// The system under test: exactly one of `builtin` or `http`.
    pub target: TargetSpec,
    /// What the system under test talks to, by name. Each gets a fault proxy on a free
    /// loopback port, and the system under test is given the proxy's address.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, DependencySpec>")]
    pub dependencies: BTreeMap<String, Value>,
    /// Feature flags and how each stage's state reaches the system under test.
    #[serde(default)]
    pub flags: Option<FlagsSpec>,
    /// The synthetic load, the same for every stage.
    pub workload: WorkloadSpec,
    /// The stages, run in order; each is one flag state and one fault plan.
    #[schemars(with = "Vec<StageSpec>")]
    pub stages: Vec<Value>,
    /// Checks over each stage's metrics: a string `METRIC OP VALUE` applies to every
    /// stage; a map gives more options.
    #[serde(default)]
    #[schemars(with = "Vec<CriterionSpec>")]
    pub criteria: Vec<Value>,
    /// Commands run once at the end, by verdict.
    #[serde(default)]
    pub on_verdict: Option<OnVerdictSpec>,
    /// How far behind its own schedule stagegate may fall in a stage before that stage's
    /// timing criteria (latency, errors, throughput, recovery, freshness, comparisons)
    /// are INCONCLUSIVE instead of judged.
    #[serde(default)]
    pub health: Option<HealthSpec>,
    /// What an operator steering the run live (`stagegate run --ui`) may do to it.
    #[serde(default)]
    pub steering: Option<SteeringSpec>,
    /// The system's own metrics, from a Prometheus server: criteria read them as
    /// `prom.NAME`.
    #[serde(default)]
    pub metrics: Option<MetricsSpec>,
}

/// `metrics:`: a Prometheus server and the PromQL queries criteria read.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsSpec {
    /// The Prometheus server's base URL, e.g. `http://127.0.0.1:9090`.
    pub prometheus: String,
    /// Each query, by the name criteria use (`prom.NAME`); one series each (aggregate
    /// in the query with `sum(...)` or `max(...)`).
    pub queries: BTreeMap<String, String>,
    /// The resolution each query is evaluated at over a stage. Default `1s`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub step: Option<Text>,
    /// How long after a stage's end to wait before reading its metrics, so that the
    /// server has scraped its last seconds. Default `5s`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub settle: Option<Text>,
    /// Each query's deadline. Default `10s`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<Text>,
}

/// `steering:`: how a run steered live ends.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SteeringSpec {
    /// The verdict of a run an operator aborts, when nothing measured so far already
    /// fails: `inconclusive` (default) or `rollback`. A criterion that failed on what
    /// was measured makes it ROLLBACK either way; an aborted run never PROMOTEs.
    #[serde(default)]
    #[schemars(extend("enum" = ["inconclusive", "rollback", null]))]
    pub on_abort: Option<String>,
}

/// `target:`: exactly one of `builtin` or `http` (with an optional `process`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// A target shipped inside stagegate: `orders-pipeline`.
    #[serde(default)]
    #[schemars(extend("enum" = ["orders-pipeline", null]))]
    pub builtin: Option<String>,
    /// Any HTTP service.
    #[serde(default)]
    pub http: Option<HttpTargetSpec>,
    /// Optional, with `http`: stagegate starts and stops the service itself.
    #[serde(default)]
    pub process: Option<ProcessSpec>,
    /// With `builtin`: the defects the candidate path (`new-enricher` on) has, for
    /// rehearsing what must be caught: `drop-on-timeout`, `duplicate-on-retry`,
    /// `slow-20ms`, `alter-field`, `accept-malformed`, `hang-on-blackhole`,
    /// `duplicate-under-load`. Default:
    /// `[duplicate-on-retry, accept-malformed]`; `[]` for a candidate without defects.
    #[serde(default)]
    pub defects: Option<Vec<String>>,
}

/// An HTTP system under test.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpTargetSpec {
    /// Base URL, e.g. `http://127.0.0.1:8080` (`{{ port }}` allowed with `process`).
    pub base_url: String,
    /// How a record is written: e.g. `{ method: POST, path: /orders, body: "{{ record | json }}" }`.
    pub write: RequestSpec,
    /// How a record is read back by key (404 means absent): `{ method: GET, path: "/orders/{{ key }}" }`.
    #[serde(default)]
    pub read: Option<RequestSpec>,
    /// How the whole output is listed (instead of reading record by record): a JSON array,
    /// an object holding the records in `items`, or JSON lines; paged by cursor or page.
    #[serde(default)]
    pub scan: Option<ScanSpec>,
    /// An endpoint stagegate serves for the system under test to push its output to
    /// (the third way to observe it, and the exact one for `freshness`).
    #[serde(default)]
    pub sink: Option<SinkSpec>,
    /// Fields the system under test renames in its output, as `sent name: output name`.
    #[serde(default)]
    pub renamed: BTreeMap<String, String>,
    /// Per-request timeout. Default `2s`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<Text>,
    /// Headers sent with every request; values may use `${secret:NAME}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// The output endpoint stagegate serves.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// The address to listen on. Default `127.0.0.1:0` (a free loopback port; a started
    /// target is told the URL as `{{ sink.url }}`).
    #[serde(default)]
    pub listen: Option<String>,
    /// The path records are POSTed to. Default `/sink`.
    #[serde(default)]
    pub path: Option<String>,
    /// How long after a stage's last request stagegate waits for acknowledged records
    /// still on their way. Default `2s`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub settle: Option<Text>,
}

/// Listing the whole output.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScanSpec {
    /// The listing's path, e.g. `/orders`.
    pub path: String,
    /// In an object answer, the key holding the records. Default `items`.
    #[serde(default)]
    pub items: Option<String>,
    /// Cursor paging: the query parameter that takes the cursor, and the answer's field
    /// holding the next one (absent or null: the last page).
    #[serde(default)]
    pub cursor: Option<CursorSpec>,
    /// Page paging: the query parameter that takes the page number, counted from
    /// `start` (default 1); an empty page ends the listing.
    #[serde(default)]
    pub page: Option<PageSpec>,
    /// List the output this often while a stage runs, to time each record's arrival
    /// for `freshness` (to within this period). Default: only at the stage's end, or
    /// every `500ms` when a criterion uses `freshness`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub every: Option<Text>,
    /// After a stage, how long to keep listing until every acknowledged record shows
    /// (an output that becomes visible late). Default `2s`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub settle: Option<Text>,
}

/// Cursor paging of a scan.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CursorSpec {
    pub param: String,
    pub field: String,
}

/// Page paging of a scan.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PageSpec {
    pub param: String,
    #[serde(default)]
    pub start: Option<u64>,
}

/// One HTTP request template.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// HTTP method. Default `POST` for writes, `GET` for reads.
    #[serde(default)]
    pub method: Option<String>,
    /// Path template, e.g. `/orders/{{ key }}`.
    pub path: String,
    /// Body template. Default for writes: `{{ record | json }}`.
    #[serde(default)]
    pub body: Option<String>,
    /// Extra headers for this request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A process stagegate starts and stops.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// Program and arguments; `{{ port }}` is a free loopback port chosen by stagegate.
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    /// Environment; may use `{{ port }}`, `{{ dependencies.NAME.address }}`, `{{ flags.url }}`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to the scenario file. Default: the scenario's folder.
    #[serde(default)]
    pub cwd: Option<String>,
    /// How to tell it is ready. Default: its port accepts TCP connections within `20s`.
    #[serde(default)]
    pub ready: Option<ReadySpec>,
}

/// Readiness check of a started process.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadySpec {
    /// An HTTP path that answers 2xx when ready, e.g. `/health`.
    #[serde(default)]
    pub http: Option<String>,
    /// Wait for the port to accept TCP connections (the default when `http` is unset).
    #[serde(default)]
    pub tcp: Option<bool>,
    /// Give up after this long. Default `20s`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<Text>,
}

/// One entry of `dependencies:`: exactly one of the forms.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DependencySpec {
    /// A dependency shipped inside stagegate: `kv-store`.
    #[serde(default)]
    #[schemars(extend("enum" = ["kv-store", null]))]
    pub builtin: Option<String>,
    /// An address that already serves, e.g. `127.0.0.1:6379`.
    #[serde(default)]
    pub external: Option<String>,
    /// A server stagegate starts, e.g. `{ command: [redis-server, --port, "{{ port }}"] }`.
    #[serde(default)]
    pub process: Option<ProcessSpec>,
    /// A container stagegate starts from a local image.
    #[serde(default)]
    pub container: Option<ContainerSpec>,
}

/// A container dependency.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// A locally available image, e.g. `local/redis:7`.
    pub image: String,
    /// The container port the service listens on.
    pub port: u16,
    /// Environment of the container.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Overrides the image's command.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// How to tell it is ready: `http` (a path answering 2xx) or `tcp` (the port accepts
    /// connections; the default), within `timeout` (default `30s`).
    #[serde(default)]
    pub ready: Option<ReadySpec>,
}

/// `flags:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagsSpec {
    /// How flag states reach the system under test: `ofrep` (default: stagegate serves
    /// OFREP on loopback), `flagd-file`, `header` or `env`.
    #[serde(default)]
    #[schemars(extend("enum" = ["ofrep", "flagd-file", "header", "env", null]))]
    pub provider: Option<String>,
    /// With `flagd-file`: where to write the flag file. Default: in the run's report folder.
    #[serde(default)]
    pub file: Option<String>,
    /// With `header`: the request header carrying the flag states. Default `X-Stagegate-Flags`.
    #[serde(default)]
    pub header: Option<String>,
    /// The flags, by key.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, FlagDefSpec>")]
    pub definitions: BTreeMap<String, Value>,
}

/// One flag definition.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagDefSpec {
    /// `boolean`, `string`, `integer`, `number` or `object`.
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["boolean", "string", "integer", "number", "object"]))]
    pub kind: String,
    /// The value when a stage does not set it.
    pub default: Value,
    /// `release`, `experiment`, `operational` or `permission` (docs/flags.md);
    /// `experimental` is read as `experiment`, with a warning.
    #[serde(default)]
    #[schemars(extend("enum" = ["release", "experiment", "operational", "permission", "experimental", null]))]
    pub category: Option<String>,
    /// Who answers for the flag.
    #[serde(default)]
    pub owner: Option<String>,
    /// Date after which the flag should be gone (`2027-03-01`); a warning past it.
    #[serde(default)]
    #[schemars(with = "Option<DateText>")]
    pub expires: Option<Text>,
}

/// `workload:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// The record schema file, relative to the scenario file.
    pub data: String,
    /// The arrival model: exactly one of `rate`, `concurrency`, `ramp`, `spike`, `daily`
    /// or `playbook`.
    #[schemars(with = "ArrivalSpec")]
    pub arrival: Value,
    /// How long each stage runs, warm-up included, e.g. `30s`.
    #[schemars(with = "DurationText")]
    pub duration: Text,
    /// The first part of each stage: measured, not judged. Default `0s`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub warmup: Option<Text>,
    /// How long one request may take before it counts as an error. Default `2s`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<Text>,
}

/// `workload.arrival`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArrivalSpec {
    /// Open model at a constant rate: `200/s`, `12000/m`.
    #[serde(default)]
    #[schemars(with = "Option<RateText>")]
    pub rate: Option<Text>,
    /// Closed model: this many requests always in flight.
    #[serde(default)]
    #[schemars(range(min = 1, max = 10000))]
    pub concurrency: Option<u32>,
    /// Open model, piecewise linear: each step moves from the previous step's rate to its
    /// own over its `for` (the first step starts at its own rate).
    #[serde(default)]
    #[schemars(with = "Option<Vec<RampStepSpec>>")]
    pub ramp: Option<Vec<Value>>,
    /// Open model: a base rate with one burst.
    #[serde(default)]
    pub spike: Option<SpikeSpec>,
    /// Open model: a day of traffic (quiet night, morning rise, evening peak) compressed
    /// into each stage.
    #[serde(default)]
    pub daily: Option<DailySpec>,
    /// An arrival shape kept in a file (`synthetic-data/playbooks/*.yaml`), relative to
    /// the scenario file.
    #[serde(default)]
    pub playbook: Option<String>,
}

/// One step of a ramp.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RampStepSpec {
    /// The rate reached at the end of this step, e.g. `400/s`.
    #[schemars(with = "RateText")]
    pub rate: Text,
    /// How long the step lasts, e.g. `20s`.
    #[serde(rename = "for")]
    #[schemars(with = "DurationText")]
    pub length: Text,
}

/// A burst on a base rate.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpikeSpec {
    /// The rate outside the burst.
    #[schemars(with = "RateText")]
    pub base: Text,
    /// The rate during the burst.
    #[schemars(with = "RateText")]
    pub peak: Text,
    /// When the burst starts, as an offset into the stage.
    #[schemars(with = "DurationText")]
    pub at: Text,
    /// How long the burst lasts.
    #[serde(rename = "for")]
    #[schemars(with = "DurationText")]
    pub length: Text,
}

/// A compressed day.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DailySpec {
    /// The night-time low.
    #[schemars(with = "RateText")]
    pub min: Text,
    /// The evening peak.
    #[schemars(with = "RateText")]
    pub max: Text,
}

/// One stage.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Unique name, used by criteria and reports.
    pub name: String,
    /// Flag states for this stage; unset flags take their default. A map like
    /// `{ true: 10% }` exposes that share of records (split by record key) to the value
    /// and the rest to the flag's default.
    #[serde(default)]
    pub flags: BTreeMap<String, Value>,
    /// The faults injected during this stage.
    #[serde(default)]
    #[schemars(with = "Vec<FaultSpec>")]
    pub faults: Vec<Value>,
    /// Widens one flag's exposure step by step: the stage runs once per step (each for
    /// `hold`), stopping at the first step that fails.
    #[serde(default)]
    pub exposure: Option<ExposureSpec>,
    /// Expands the stage over combinations of flag values and fault sets: one stage per
    /// cell.
    #[serde(default)]
    pub matrix: Option<MatrixSpec>,
}

/// A flag matrix: `{ mode: pairwise, flags: { a: [true, false], b: [x, y, z] }, faults:
/// { none: [], slow-store: [...] }, exclude: [ { a: false, b: z } ] }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatrixSpec {
    /// `cartesian` (every combination, the default) or `pairwise` (every pair of values
    /// of any two dimensions in at least one cell: far fewer cells).
    #[serde(default)]
    #[schemars(with = "Option<MatrixMode>")]
    pub mode: Option<String>,
    /// Each flag and the values it takes across the cells.
    #[serde(default)]
    pub flags: BTreeMap<String, Vec<Value>>,
    /// Named fault sets, one per cell (`none: []` for a cell without faults); the
    /// dimension is called `faults`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, Vec<FaultSpec>>")]
    pub faults: BTreeMap<String, Vec<Value>>,
    /// Combinations that cannot occur: each a map of dimension (a flag, or `faults`) to
    /// value (a flag value, or a fault set's name); a cell matching every entry of one
    /// is not generated.
    #[serde(default)]
    pub exclude: Vec<BTreeMap<String, Value>>,
}

/// How a matrix chooses its cells.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum MatrixMode {
    Cartesian,
    Pairwise,
}

/// A progressive exposure: `{ flag: new-enricher, steps: [1%, 10%, 50%, 100%], hold: 20s }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExposureSpec {
    /// The flag whose exposure widens.
    pub flag: String,
    /// The value exposed; the rest of the records see the flag's default. Default: the
    /// other value of a boolean flag (required for other types).
    #[serde(default)]
    pub value: Option<Value>,
    /// The shares exposed, in increasing order, e.g. `[1%, 10%, 50%, 100%]`.
    #[schemars(with = "Vec<FractionText>")]
    pub steps: Vec<Text>,
    /// How long each step lasts, warm-up included, e.g. `20s`. Default: `workload.duration`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub hold: Option<Text>,
}

/// One fault. Which parameters apply depends on `kind` (see the fault table).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// The fault kind: one of the fault catalog's (`stagegate schema` lists them).
    pub kind: String,
    /// A dependency name, `target`, or `workload`.
    pub at: String,
    /// Offset into the stage when it starts. Default `0s`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub from: Option<Text>,
    /// How long it lasts. Default: to the stage's end.
    #[serde(default, rename = "for")]
    #[schemars(with = "Option<DurationText>")]
    pub length: Option<Text>,
    /// Repeat period, for flapping: active for `for` at the start of every period.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub every: Option<Text>,
    /// Share of connections (proxy faults, decided once per connection), requests (HTTP
    /// faults) or records (workload faults) affected. Default `100%`.
    #[serde(default)]
    #[schemars(with = "Option<FractionText>")]
    pub probability: Option<Text>,
    /// Proxy faults: `upstream` (system under test to dependency), `downstream`, or
    /// `both`. Default `both`.
    #[serde(default)]
    #[schemars(extend("enum" = ["upstream", "downstream", "both", null]))]
    pub direction: Option<String>,
    /// latency: how long each chunk is held; slow_close: how long the close is held;
    /// slicer: pause between slices; late: how far in the past event times are set.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub delay: Option<Text>,
    /// latency: the spread around `delay`. Default `0ms`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub jitter: Option<Text>,
    /// bandwidth: throughput cap, e.g. `64KB/s`; corrupt: share of bytes flipped, e.g. `0.1%`.
    #[serde(default)]
    #[schemars(with = "Option<FaultRate>")]
    pub rate: Option<Text>,
    /// reset: bytes let through before the reset. Default 0.
    #[serde(default)]
    pub after: Option<u64>,
    /// slicer: mean slice size in bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// slicer: slice size spread in bytes. Default 0.
    #[serde(default)]
    pub size_variation: Option<u64>,
    /// limit_data: bytes after which the connection is closed.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// http_error: the status answered, e.g. 503.
    #[serde(default)]
    #[schemars(range(min = 100, max = 599))]
    pub status: Option<u16>,
    /// http_error: the body answered. Default: empty.
    #[serde(default)]
    pub body: Option<String>,
    /// kill: the signal sent, e.g. `SIGKILL` (default) or `SIGTERM`.
    #[serde(default)]
    pub signal: Option<String>,
    /// kill: restart the process this long after the kill. Default: not restarted.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub restart_after: Option<Text>,
    /// out_of_order: how many records may be reordered among each other, 2 to 10000.
    /// Default 10.
    #[serde(default)]
    #[schemars(range(min = 2, max = 10000))]
    pub window: Option<u32>,
    /// http_error and HTTP latency: only requests that match.
    #[serde(default, rename = "match")]
    pub predicate: Option<MatchSpec>,
}

/// A fault's `rate`: a byte rate (bandwidth) or a fraction (corrupt).
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum FaultRate {
    Bytes(ByteRateText),
    Share(FractionText),
}

/// Which HTTP requests an HTTP fault applies to.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Only this method, e.g. `POST`.
    #[serde(default)]
    pub method: Option<String>,
    /// Only paths starting with this, e.g. `/orders`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Only the first N matching requests of each activation.
    #[serde(default)]
    pub first: Option<u64>,
}

/// A criterion: a string `METRIC OP VALUE`, or a map.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum CriterionSpec {
    /// `METRIC OP VALUE`, applied to every stage, e.g. `latency.p99 < 250ms`.
    Check(String),
    Map(CriterionMapSpec),
}

/// A criterion in its map form: either `check` or `compare`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CriterionMapSpec {
    /// `METRIC OP VALUE`, e.g. `errors.rate < 5%`.
    #[serde(default)]
    pub check: Option<String>,
    /// The stages it applies to. Default: all. A criterion for a named stage replaces a
    /// general one on the same metric there.
    #[serde(default)]
    pub stages: Option<Vec<String>>,
    /// Compare this metric's distribution (`latency`, or `latency.p99` etc.) in `stage`
    /// against `baseline`.
    #[serde(default)]
    #[schemars(extend("enum" = ["latency", "errors", "errors.rate", null]))]
    pub compare: Option<String>,
    /// The stage under comparison.
    #[serde(default)]
    pub stage: Option<String>,
    /// The reference stage.
    #[serde(default)]
    pub baseline: Option<String>,
    /// The allowed regression of `stage` over `baseline`: relative (`10%`) or, for
    /// latency, absolute (`+5ms`, which suits fast services whose relative noise is
    /// large). Default `10%` for latency, one point (`1%`) for errors.
    #[serde(default)]
    #[schemars(with = "Option<ToleranceText>")]
    pub max_regression: Option<Text>,
    /// Confidence of the statistical test, e.g. `95%`. Default `95%`.
    #[serde(default)]
    #[schemars(with = "Option<FractionText>")]
    pub confidence: Option<Text>,
    /// Fewer judged samples make the criterion INCONCLUSIVE, never a silent pass.
    /// Default 100.
    #[serde(default)]
    pub min_samples: Option<u64>,
    /// Stop the run as soon as the criterion cannot hold any more. Default `false`.
    #[serde(default)]
    pub abort_on_fail: Option<bool>,
    /// `enforce` (default: decides the verdict), `warn` (reported, never blocks),
    /// `observe` (measured only).
    #[serde(default)]
    #[schemars(extend("enum" = ["enforce", "warn", "observe", null]))]
    pub level: Option<String>,
}

/// Commands run once at the end, by verdict. Each is a program and its arguments, run
/// from the scenario's folder with `STAGEGATE_VERDICT` and `STAGEGATE_REPORT` set.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OnVerdictSpec {
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub promote: Option<Vec<String>>,
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub rollback: Option<Vec<String>>,
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub inconclusive: Option<Vec<String>>,
}

/// `health:`: limits on stagegate's own lateness in a stage.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// How late requests may leave against their intended time, at p99. Default `10ms`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub send_lag_p99: Option<Text>,
    /// How late stagegate's timers (and the builtin target's) may fire, at p99, beyond
    /// their millisecond resolution. Default `10ms`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub timer_lag_p99: Option<Text>,
    /// How late a fault proxy may release data it held, at p99. Default `10ms`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub proxy_hold_overrun_p99: Option<Text>,
    /// Scheduled sends that may be dropped because stagegate fell behind. Default `0`.
    #[serde(default)]
    pub dropped: Option<u64>,
}
