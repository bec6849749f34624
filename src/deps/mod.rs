//! Dependencies of the system under test: provisioning them and putting a fault proxy
//! in front of each.
//!
//! [`Dependency`] is one checked entry of the scenario's `dependencies:` map.
//! [`provision`] starts what needs starting and a [`Gate`] of fault proxies in front
//! of it; the system under test is only ever given the outer proxy's address. [`Running::stop`] undoes both, and the runner calls it on every exit path.

use std::net::SocketAddr;

use serde::Serialize;

pub mod container;
pub mod process;

use crate::fault::gate::{Gate, Needs};
use crate::sut::store::KvStore;
use container::{ContainerError, ManagedContainer};
use process::{ManagedProcess, ProcessError};

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
}

/// A provisioned dependency with its fault proxy.
pub struct Running {
    pub name: String,
    /// The fault proxies in front of it.
    pub gate: Gate,
    store: Option<KvStore>,
    /// The server stagegate started, for `process` dependencies.
    pub process: Option<ManagedProcess>,
    /// The container stagegate started, for `container` dependencies.
    pub container: Option<ManagedContainer>,
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
        self.process.is_some() || self.container.is_some()
    }

    /// Sends `signal` to what stagegate started (its whole process group, or the
    /// container's main process).
    pub async fn kill(&self, signal: nix::sys::signal::Signal) {
        if let Some(p) = &self.process {
            p.kill(signal);
        }
        if let Some(c) = &self.container {
            c.kill(signal.as_str()).await;
        }
    }

    /// Starts a killed dependency again and waits for it; a container that comes back
    /// at another address gets the proxy pointed at it.
    pub async fn restart(&self) -> Result<(), String> {
        if let Some(p) = &self.process {
            p.restart().await.map_err(|e| e.to_string())?;
        }
        if let Some(c) = &self.container {
            let address = c.restart().await.map_err(|e| e.to_string())?;
            self.gate.set_upstream(address);
        }
        Ok(())
    }

    /// Freezes it (SIGSTOP to the group, or `docker pause`).
    pub async fn pause(&self) {
        if let Some(p) = &self.process {
            p.pause();
        }
        if let Some(c) = &self.container {
            c.pause().await;
        }
    }

    /// Lets a frozen dependency run again.
    pub async fn resume(&self) {
        if let Some(p) = &self.process {
            p.resume();
        }
        if let Some(c) = &self.container {
            c.resume().await;
        }
    }

    /// Whether it is frozen now.
    pub fn is_paused(&self) -> bool {
        self.process.as_ref().is_some_and(|p| p.is_paused()) || self.container.as_ref().is_some_and(|c| c.is_paused())
    }

    /// Removes every fault, stops the proxy and whatever was started.
    pub async fn stop(self) {
        self.gate.stop().await;
        if let Some(p) = &self.process {
            p.stop().await;
        }
        if let Some(c) = self.container {
            c.stop().await;
        }
        if let Some(store) = self.store {
            store.stop().await;
        }
    }
}

/// Starts `dep` (its output logged under `log_dir`) and the fault proxies `needs` asks
/// for in front of it (always a TCP proxy; an HTTP one too for request faults).
pub async fn provision(dep: &Dependency, needs: Needs, log_dir: Option<&std::path::Path>) -> Result<Running, DepError> {
    let needs = Needs { tcp: true, ..needs };
    let proxy_for = |upstream: SocketAddr| async move {
        Gate::start(&dep.name, upstream, None, needs, false)
            .await
            .map_err(|source| DepError::Proxy { name: dep.name.clone(), source })
    };
    match &dep.provision {
        Provision::Builtin(BuiltinDependency::KvStore) => {
            let store = KvStore::start().await.map_err(|source| DepError::Start { name: dep.name.clone(), source })?;
            let proxy = match proxy_for(store.addr()).await {
                Ok(p) => p,
                Err(e) => {
                    store.stop().await;
                    return Err(e);
                }
            };
            Ok(Running { name: dep.name.clone(), gate: proxy, store: Some(store), process: None, container: None })
        }
        Provision::External(address) => {
            let resolved = tokio::net::lookup_host(address.as_str()).await.ok().and_then(|mut a| a.next());
            let upstream = resolved.ok_or_else(|| DepError::Address {
                name: dep.name.clone(),
                address: address.clone(),
                message: "no address found".into(),
            })?;
            Ok(Running {
                name: dep.name.clone(),
                gate: proxy_for(upstream).await?,
                store: None,
                process: None,
                container: None,
            })
        }
        Provision::Process(def) => {
            let log = log_dir.map(|d| d.join(format!("{}.log", dep.name)));
            if let Some(d) = log_dir {
                let _ = std::fs::create_dir_all(d);
            }
            let process =
                ManagedProcess::start(&format!("`{}`", dep.name), def, log, Default::default(), Vec::new()).await?;
            match proxy_for(process.address()).await {
                Ok(gate) => {
                    Ok(Running { name: dep.name.clone(), gate, store: None, process: Some(process), container: None })
                }
                Err(e) => {
                    process.stop().await;
                    Err(e)
                }
            }
        }
        Provision::Container(def) => {
            let log = log_dir.map(|d| d.join(format!("{}.log", dep.name)));
            let container = ManagedContainer::start(&format!("`{}`", dep.name), def, log).await?;
            match proxy_for(container.address()).await {
                Ok(gate) => {
                    Ok(Running { name: dep.name.clone(), gate, store: None, process: None, container: Some(container) })
                }
                Err(e) => {
                    container.stop().await;
                    Err(e)
                }
            }
        }
    }
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
