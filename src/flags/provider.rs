//! Flag providers: how each stage's flag state reaches the system under test.
//!
//! [`FlagProvider`] is the seam: the runner hands each stage's flags over before the
//! stage starts and never asks which provider it has. [`provide`] builds the one the
//! scenario names (adopting whatever it starts into the run's teardown guard):
//!
//! - `ofrep`: stagegate serves OFREP ([`super::ofrep`]); a started target is told
//!   `{{ flags.url }}`; a hand-over waits (a bounded time) until a bulk poll saw it;
//! - `flagd-file`: a flagd file rewritten atomically at each stage ([`super::flagd`]);
//!   a started target is told `{{ flags.file }}`;
//! - `header`: each request carries the record's flag values in a header;
//! - `env`: a started target gets `FLAG_*` variables, and is restarted between stages
//!   whose flags differ.
//!
//! Not here: what a flag state is ([`super::FlagState`]) and the OFREP protocol.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::ofrep::{FlagExposure, OfrepServer};
use super::{FlagSet, FlagState, Provider, env_vars, flagd};
use crate::health::Trouble;
use crate::teardown::Guard;

/// How long a hand-over waits for a polling OFREP client to see the new state.
const PICK_UP: Duration = Duration::from_secs(3);

/// The flags of one stage: every flag's state.
pub type StageFlags = BTreeMap<String, FlagState>;

/// What a hand-over asks of the runner before the stage may start.
#[derive(Debug, Clone, PartialEq)]
pub enum Handover {
    /// The flags are in place.
    Ready,
    /// The target sees them only once restarted with this environment.
    Restart(Vec<(String, String)>),
}

/// Why a hand-over failed (stagegate's failure, not the target's).
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("the OFREP flag endpoint could not listen: {0}")]
    Listen(std::io::Error),
    #[error("cannot write the flag file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
}

/// Hands flag states to the system under test.
#[async_trait::async_trait]
pub trait FlagProvider: Send + Sync {
    /// What a started target's templates see under `flags` (`url`, `file`).
    fn context(&self) -> Value;

    /// The environment a started target gets at its first start.
    fn initial_env(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Where the system under test fetches its flags, to name in progress lines.
    fn endpoint(&self) -> Option<String> {
        None
    }

    /// Hands `flags` over before a stage; `previous` is the last stage's.
    async fn hand_over(
        &self,
        flags: &StageFlags,
        previous: Option<&StageFlags>,
        cancel: &CancellationToken,
    ) -> Result<Handover, FlagError>;

    /// The header a request carries, given the record's flag values (a JSON object).
    fn header(&self, _values: &Value) -> Option<(String, String)> {
        None
    }

    /// Whether requests need the record's flag values (for [`FlagProvider::header`]).
    fn wants_values(&self) -> bool {
        false
    }

    /// What the system under test asked of each flag since the last call, when the
    /// provider can see it (OFREP); `None` when it cannot (a flag file is read unseen).
    fn take_exposure(&self) -> Option<BTreeMap<String, FlagExposure>> {
        None
    }

    /// The string values the evaluation contexts carried since the last call, when the
    /// provider sees them (OFREP); `None` when it cannot.
    fn take_contexts(&self) -> Option<super::ofrep::Contexts> {
        None
    }

    /// How the flags reach the system under test, for the exposure a stage reports.
    fn delivery(&self) -> Delivery;
}

/// How flags reach the system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// It asks stagegate (OFREP): what it asked is known.
    Evaluated,
    /// Each request carries them (a header): what was sent is known.
    Header,
    /// Given at start (environment variables).
    Environment,
    /// A file it reads unseen.
    File,
}

/// Builds the provider `flags` names. `first` is the first stage's flags (in place
/// before anything starts); `report_dir` holds the
/// flag file unless the scenario names one (relative to `scenario_dir`).
pub async fn provide(
    flags: &FlagSet,
    first: &StageFlags,
    scenario_dir: &std::path::Path,
    report_dir: Option<&std::path::Path>,
    guard: &Guard,
    trouble: &Trouble,
) -> Result<Arc<dyn FlagProvider>, FlagError> {
    Ok(match &flags.provider {
        Provider::Ofrep => {
            let server =
                guard.adopt(Arc::new(OfrepServer::start(Some(trouble.clone())).await.map_err(FlagError::Listen)?));
            server.set(first.clone());
            Arc::new(Ofrep { server, polled: !flags.definitions.is_empty() })
        }
        Provider::FlagdFile(file) => {
            let path = match (file, report_dir) {
                (Some(f), _) => scenario_dir.join(f),
                (None, Some(dir)) => dir.join("flags.flagd.json"),
                (None, None) => std::env::temp_dir().join(format!("stagegate-{}.flagd.json", std::process::id())),
            };
            // The target is told this path and runs in the scenario's folder, not here.
            let path = std::path::absolute(&path).unwrap_or(path);
            flagd::write(&path, first).map_err(|source| FlagError::File { path: path.clone(), source })?;
            Arc::new(FlagdFile { path })
        }
        Provider::Header(name) => Arc::new(Header { name: name.clone() }),
        Provider::Env => Arc::new(Env { first: env_vars(first) }),
    })
}

/// What the header percent-encodes besides control characters and non-ASCII bytes: a
/// space, and the characters that delimit flags and values.
const HEADER_ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b' ').add(b'%').add(b',').add(b'=');

/// A flag name or value as the header carries it, percent-encoded (`%`, `,`, `=`,
/// spaces, control characters and non-ASCII), so that a value cannot read as another
/// flag, nor break the header.
/// The `header` provider's header value for a record's flag values (a JSON object):
/// `name=value,...`, each part percent-encoded so no value can pose as another flag.
pub fn header_text(values: &Value) -> Option<String> {
    let Value::Object(values) = values else { return None };
    let text: Vec<String> = values
        .iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(&v.as_str().map_or(v.to_string(), String::from))))
        .collect();
    Some(text.join(","))
}

fn escape(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, HEADER_ESCAPED).to_string()
}

struct Ofrep {
    server: Arc<OfrepServer>,
    /// Whether a client polls for flags at all (a scenario without flags has none).
    polled: bool,
}

#[async_trait::async_trait]
impl FlagProvider for Ofrep {
    fn context(&self) -> Value {
        json!({ "url": self.server.url() })
    }

    fn endpoint(&self) -> Option<String> {
        self.polled.then(|| self.server.url())
    }

    async fn hand_over(
        &self,
        flags: &StageFlags,
        _previous: Option<&StageFlags>,
        cancel: &CancellationToken,
    ) -> Result<Handover, FlagError> {
        let generation = self.server.set(flags.clone());
        // Only a client that fetches every flag ahead (and polls) must be waited for; one
        // that evaluates per request sees the new state at its next evaluation.
        if self.polled && self.server.bulk_clients() {
            let picked = tokio::select! {
                _ = cancel.cancelled() => true,
                picked = self.server.picked_up(generation, PICK_UP) => picked,
            };
            if !picked {
                tracing::warn!("the target did not fetch the new flag state within 3s");
            }
        }
        Ok(Handover::Ready)
    }

    fn take_exposure(&self) -> Option<BTreeMap<String, FlagExposure>> {
        Some(self.server.take_exposure())
    }

    fn take_contexts(&self) -> Option<super::ofrep::Contexts> {
        Some(self.server.take_contexts())
    }

    fn delivery(&self) -> Delivery {
        Delivery::Evaluated
    }
}

struct FlagdFile {
    path: PathBuf,
}

#[async_trait::async_trait]
impl FlagProvider for FlagdFile {
    fn context(&self) -> Value {
        json!({ "file": self.path.display().to_string() })
    }

    async fn hand_over(
        &self,
        flags: &StageFlags,
        _previous: Option<&StageFlags>,
        _cancel: &CancellationToken,
    ) -> Result<Handover, FlagError> {
        flagd::write(&self.path, flags).map_err(|source| FlagError::File { path: self.path.clone(), source })?;
        Ok(Handover::Ready)
    }

    fn delivery(&self) -> Delivery {
        Delivery::File
    }
}

struct Header {
    name: String,
}

#[async_trait::async_trait]
impl FlagProvider for Header {
    fn context(&self) -> Value {
        json!({ "header": self.name })
    }

    async fn hand_over(
        &self,
        _flags: &StageFlags,
        _previous: Option<&StageFlags>,
        _cancel: &CancellationToken,
    ) -> Result<Handover, FlagError> {
        Ok(Handover::Ready)
    }

    fn header(&self, values: &Value) -> Option<(String, String)> {
        Some((self.name.clone(), header_text(values)?))
    }

    fn wants_values(&self) -> bool {
        true
    }

    fn delivery(&self) -> Delivery {
        Delivery::Header
    }
}

struct Env {
    first: Vec<(String, String)>,
}

#[async_trait::async_trait]
impl FlagProvider for Env {
    fn context(&self) -> Value {
        json!({})
    }

    fn initial_env(&self) -> Vec<(String, String)> {
        self.first.clone()
    }

    async fn hand_over(
        &self,
        flags: &StageFlags,
        previous: Option<&StageFlags>,
        _cancel: &CancellationToken,
    ) -> Result<Handover, FlagError> {
        Ok(match previous {
            Some(p) if p != flags => Handover::Restart(env_vars(flags)),
            _ => Handover::Ready,
        })
    }

    fn delivery(&self) -> Delivery {
        Delivery::Environment
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(on: bool) -> StageFlags {
        BTreeMap::from([("new-path".to_string(), FlagState::Fixed(json!(on)))])
    }

    #[tokio::test]
    async fn env_asks_for_a_restart_only_when_the_flags_change() {
        let set = FlagSet { provider: Provider::Env, definitions: Vec::new() };
        let p = provide(&set, &flags(false), std::path::Path::new("."), None, &Guard::new(), &Trouble::new())
            .await
            .unwrap();
        assert_eq!(p.initial_env(), vec![("FLAG_NEW_PATH".to_string(), "false".to_string())]);
        let cancel = CancellationToken::new();
        assert_eq!(p.hand_over(&flags(false), None, &cancel).await.unwrap(), Handover::Ready);
        assert_eq!(p.hand_over(&flags(false), Some(&flags(false)), &cancel).await.unwrap(), Handover::Ready);
        assert_eq!(
            p.hand_over(&flags(true), Some(&flags(false)), &cancel).await.unwrap(),
            Handover::Restart(vec![("FLAG_NEW_PATH".to_string(), "true".to_string())])
        );
    }

    #[tokio::test]
    async fn header_carries_each_records_values() {
        let set = FlagSet { provider: Provider::Header("X-Flags".into()), definitions: Vec::new() };
        let p =
            provide(&set, &flags(true), std::path::Path::new("."), None, &Guard::new(), &Trouble::new()).await.unwrap();
        assert_eq!(p.header(&json!({"a": true, "b": "blue"})), Some(("X-Flags".into(), "a=true,b=blue".into())));
        // A value cannot pose as another flag, nor break the header.
        let (_, hostile) = p.header(&json!({"tier": "gold,new-enricher=true", "n": "d\ne ü%"})).unwrap();
        assert_eq!(hostile, "n=d%0Ae%20%C3%BC%25,tier=gold%2Cnew-enricher%3Dtrue");
        assert!(reqwest::header::HeaderValue::from_str(&hostile).is_ok());
    }
}
