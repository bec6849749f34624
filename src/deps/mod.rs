//! Dependencies of the system under test: provisioning them and putting a fault proxy
//! in front of each.
//!
//! [`Dependency`] is one checked entry of the scenario's `dependencies:` map.
//! [`provision`] starts what needs starting and a [`Gate`] of fault proxies in front
//! of it, each adopted by the run's teardown guard before it starts; the system under
//! test is only ever given the outer proxy's address. [`runfile`] keeps `run.json`,
//! [`cleanup`] reads it back after a run was killed outright.

use std::net::SocketAddr;

use serde::Serialize;

pub mod cleanup;
pub mod container;
pub mod process;
pub mod runfile;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::fault::gate::{Gate, Needs};
use crate::fault::timeline::Controllable;
use crate::health::Trouble;
use crate::sut::store::KvStore;
use crate::teardown::Guard;
use container::{ContainerError, ManagedContainer};
use process::{ManagedProcess, ProcessError};
use runfile::RunFile;

/// The builtin dependencies, by the name a scenario uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BuiltinDependency {
    /// `kv-store`: the append-only record store of the builtin pipeline.
    #[serde(rename = "kv-store")]
    KvStore,
}

impl BuiltinDependency {
    /// Every builtin dependency with its scenario name.
    pub const ALL: [(&'static str, BuiltinDependency); 1] = [("kv-store", BuiltinDependency::KvStore)];
}

/// How a dependency comes to exist.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provision {
    /// Started inside stagegate.
    Builtin(BuiltinDependency),
    /// Already serving at this `host:port`.
    External(String),
    /// A server stagegate starts and stops.
    Process(ProcessDef),
    /// A container stagegate starts from a local image.
    Container(ContainerDef),
}

/// A process stagegate starts (a dependency, or the target).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessDef {
    /// Program and arguments, with `{{ ... }}` placeholders still in.
    pub command: Vec<String>,
    pub env: std::collections::BTreeMap<String, String>,
    /// Working directory (the scenario's folder unless set).
    pub cwd: std::path::PathBuf,
    /// An HTTP path that answers 2xx when ready; `None`: the port accepts TCP.
    pub ready_http: Option<String>,
    #[serde(with = "crate::report::serde_duration")]
    pub ready_timeout: std::time::Duration,
}

/// A container dependency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerDef {
    pub image: String,
    pub port: u16,
    pub env: std::collections::BTreeMap<String, String>,
    pub command: Option<Vec<String>>,
    /// An HTTP path that answers 2xx when ready; `None`: the port accepts TCP.
    pub ready_http: Option<String>,
    #[serde(with = "crate::report::serde_duration")]
    pub ready_timeout: std::time::Duration,
}

/// One checked dependency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dependency {
    pub name: String,
    pub provision: Provision,
}

/// Why a dependency could not be provisioned.
#[derive(Debug, thiserror::Error)]
pub enum DepError {
    #[error("dependency `{name}` could not start: {source}")]
    Start { name: String, source: std::io::Error },
    #[error("the fault proxy for dependency `{name}` could not listen: {source}")]
    Proxy { name: String, source: std::io::Error },
    #[error("dependency {0}")]
    Process(#[from] ProcessError),
    #[error("dependency {0}")]
    Container(#[from] ContainerError),
    #[error("dependency `{name}`: cannot resolve `{address}`: {message}")]
    Address { name: String, address: String, message: String },
    #[error("interrupted while dependency `{name}` was starting")]
    Cancelled { name: String },
}

/// What serves a dependency.
pub enum Server {
    /// The builtin store, inside stagegate.
    Builtin(Arc<KvStore>),
    /// Already serving; nothing to start or stop.
    External,
    /// A process stagegate started.
    Process(Arc<ManagedProcess>),
    /// A container stagegate started.
    Container(Arc<ManagedContainer>),
}

/// A provisioned dependency with its fault proxy.
pub struct Running {
    pub name: String,
    /// The fault proxies in front of it.
    pub gate: Arc<Gate>,
    pub server: Server,
    /// Its form (`builtin: kv-store`, ...), as the scenario gave it.
    pub provision: Provision,
}

impl Running {
    /// The address the system under test is given (the proxy's).
    pub fn address(&self) -> SocketAddr {
        self.gate.addr()
    }

    /// The dependency's real address, for observing it without faults.
    pub fn real_address(&self) -> SocketAddr {
        self.gate.upstream()
    }

    /// Whether stagegate started it (as a process or a container), so process faults
    /// can act on it.
    pub fn is_started(&self) -> bool {
        matches!(self.server, Server::Process(_) | Server::Container(_))
    }
}

#[async_trait::async_trait]
impl Controllable for Running {
    async fn kill(&self, signal: nix::sys::signal::Signal) {
        match &self.server {
            Server::Process(p) => p.kill(signal),
            Server::Container(c) => c.kill(signal.as_str()).await,
            Server::Builtin(_) | Server::External => {}
        }
    }

    /// Starts a killed dependency again and waits for it; a container that comes back
    /// at another address gets the proxy pointed at it.
    async fn restart(&self, cancel: &CancellationToken) -> Result<(), String> {
        match &self.server {
            Server::Process(p) => p.restart(cancel).await.map_err(|e| e.to_string()),
            Server::Container(c) => {
                let address = c.restart(cancel).await.map_err(|e| e.to_string())?;
                self.gate.set_upstream(address);
                Ok(())
            }
            Server::Builtin(_) | Server::External => Ok(()),
        }
    }

    async fn pause(&self) {
        match &self.server {
            Server::Process(p) => p.pause(),
            Server::Container(c) => c.pause().await,
            Server::Builtin(_) | Server::External => {}
        }
    }

    async fn resume(&self) {
        match &self.server {
            Server::Process(p) => p.resume(),
            Server::Container(c) => c.resume().await,
            Server::Builtin(_) | Server::External => {}
        }
    }

    fn is_paused(&self) -> bool {
        match &self.server {
            Server::Process(p) => p.is_paused(),
            Server::Container(c) => c.is_paused(),
            Server::Builtin(_) | Server::External => false,
        }
    }
}

#[async_trait::async_trait]
impl Controllable for ManagedProcess {
    async fn kill(&self, signal: nix::sys::signal::Signal) {
        ManagedProcess::kill(self, signal);
    }

    async fn restart(&self, cancel: &CancellationToken) -> Result<(), String> {
        ManagedProcess::restart(self, cancel).await.map_err(|e| e.to_string())
    }

    async fn pause(&self) {
        ManagedProcess::pause(self);
    }

    async fn resume(&self) {
        ManagedProcess::resume(self);
    }

    fn is_paused(&self) -> bool {
        ManagedProcess::is_paused(self)
    }
}

/// What provisioning needs from the run: its guard (everything is adopted there before
/// it starts), its record, where logs go, its cancellation and its trouble channel.
pub struct Provisioning<'a> {
    pub guard: &'a Guard,
    pub run: Arc<RunFile>,
    pub log_dir: Option<&'a std::path::Path>,
    pub cancel: &'a CancellationToken,
    pub trouble: &'a Trouble,
}

/// Starts `dep` and the fault proxies `needs` asks for in front of it (always a TCP
/// proxy; an HTTP one too for request faults), each adopted by the guard first.
pub async fn provision(dep: &Dependency, needs: Needs, with: &Provisioning<'_>) -> Result<Running, DepError> {
    let needs = Needs { tcp: true, ..needs };
    let name = dep.name.clone();
    let log = with.log_dir.map(|d| d.join(format!("{name}.log")));
    let (server, upstream) = match &dep.provision {
        Provision::Builtin(BuiltinDependency::KvStore) => {
            let store = crate::threads::run_on(crate::threads::builtin(), KvStore::start())
                .await
                .map_err(|source| DepError::Start { name: name.clone(), source })?;
            let store = with.guard.adopt(Arc::new(store));
            let addr = store.addr();
            (Server::Builtin(store), addr)
        }
        Provision::External(address) => {
            let lookup =
                tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::lookup_host(address.as_str()));
            let resolved = tokio::select! {
                _ = with.cancel.cancelled() => return Err(DepError::Cancelled { name }),
                r = lookup => r,
            };
            let upstream = match resolved {
                Ok(Ok(mut found)) => found.next(),
                _ => None,
            };
            let upstream = upstream.ok_or_else(|| DepError::Address {
                name: name.clone(),
                address: address.clone(),
                message: "no address found".into(),
            })?;
            (Server::External, upstream)
        }
        Provision::Process(def) => {
            let label = format!("`{name}`");
            let process =
                ManagedProcess::new(&label, &name, def, log, Default::default(), Vec::new(), with.run.clone())?;
            let process = with.guard.adopt(Arc::new(process));
            process.start(with.cancel).await?;
            let addr = process.address();
            (Server::Process(process), addr)
        }
        Provision::Container(def) => {
            let label = format!("`{name}`");
            let container =
                with.guard.adopt(Arc::new(ManagedContainer::new(&label, &name, def, log, with.run.clone())));
            container.start(with.cancel).await?;
            let addr = container.address();
            (Server::Container(container), addr)
        }
    };
    let gate = Gate::start(&name, upstream, None, needs, false, Some(with.trouble.clone()))
        .await
        .map_err(|source| DepError::Proxy { name: name.clone(), source })?;
    let gate = with.guard.adopt(Arc::new(gate));
    Ok(Running { name, gate, server, provision: dep.provision.clone() })
}

impl Provision {
    /// The form's name in scenario files.
    pub fn kind(&self) -> &'static str {
        match self {
            Provision::Builtin(_) => "builtin",
            Provision::External(_) => "external",
            Provision::Process(_) => "process",
            Provision::Container(_) => "container",
        }
    }
}
