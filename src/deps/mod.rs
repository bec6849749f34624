//! Dependencies of the system under test: provisioning them and putting a fault proxy
//! in front of each.
//!
//! [`Dependency`] is one checked entry of the scenario's `dependencies:` map.
//! [`provision`] starts what needs starting (here: the builtin store) and a
//! [`Proxy`] in front of it; the system under test is only ever given the proxy's
//! address. [`Running::stop`] undoes both, and the runner calls it on every exit path.

use std::net::SocketAddr;

use serde::Serialize;

use crate::fault::proxy::Proxy;
use crate::sut::store::KvStore;

/// The builtin dependencies, by the name a scenario uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BuiltinDependency {
    /// `kv-store`: the append-only record store of the builtin pipeline.
    #[serde(rename = "kv-store")]
    KvStore,
}

impl BuiltinDependency {
    /// Every builtin dependency with its scenario name.
    pub const ALL: [(&'static str, BuiltinDependency); 1] =
        [("kv-store", BuiltinDependency::KvStore)];
}

/// How a dependency comes to exist.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provision {
    /// Started inside stagegate.
    Builtin(BuiltinDependency),
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
    Start {
        name: String,
        source: std::io::Error,
    },
    #[error("the fault proxy for dependency `{name}` could not listen: {source}")]
    Proxy {
        name: String,
        source: std::io::Error,
    },
}

/// A provisioned dependency with its fault proxy.
pub struct Running {
    pub name: String,
    pub proxy: Proxy,
    store: Option<KvStore>,
}

impl Running {
    /// The address the system under test is given (the proxy's).
    pub fn address(&self) -> SocketAddr {
        self.proxy.addr()
    }

    /// The dependency's real address, for observing it without faults.
    pub fn real_address(&self) -> SocketAddr {
        self.proxy.upstream()
    }

    /// Removes every fault, stops the proxy and whatever was started.
    pub async fn stop(self) {
        self.proxy.stop().await;
        if let Some(store) = self.store {
            store.stop().await;
        }
    }
}

/// Starts `dep` and a fault proxy in front of it.
pub async fn provision(dep: &Dependency) -> Result<Running, DepError> {
    match dep.provision {
        Provision::Builtin(BuiltinDependency::KvStore) => {
            let store = KvStore::start().await.map_err(|source| DepError::Start {
                name: dep.name.clone(),
                source,
            })?;
            let proxy = match Proxy::start(&dep.name, store.addr()).await {
                Ok(p) => p,
                Err(source) => {
                    store.stop().await;
                    return Err(DepError::Proxy {
                        name: dep.name.clone(),
                        source,
                    });
                }
            };
            Ok(Running {
                name: dep.name.clone(),
                proxy,
                store: Some(store),
            })
        }
    }
}
