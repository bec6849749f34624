//! Container dependencies: a server started from a local image through testcontainers.
//!
//! Images are never pulled: a missing image is an error that says how to look for it.
//! Each container gets a name made of the run's id and the dependency's name, and the
//! run's label, both written into `run.json` *before* the container is created; so a
//! container whose creation was interrupted, or whose stagegate was killed, is still
//! found and removed (by teardown, or by `stagegate cleanup`). The fault proxy reaches
//! the container at its bridge address (no host port is published). Its output goes to
//! `NAME.log` in the report folder. `kill` sends a signal through the Docker API and
//! `pause` freezes it (`docker pause`). Every wait has a deadline and gives way to the
//! run's cancellation.
//!
//! Not here: the fault proxy in front of it (`fault::gate`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio_util::sync::CancellationToken;

use super::ContainerDef;
use super::process::{Readiness, answers, wait_until_ready};
use super::runfile::{LABEL, OWNER_LABEL, RunFile};
use crate::limits::CONTAINER_STOP;

/// Why a container could not be started or is not ready.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{name}: cannot reach Docker: {message}")]
    Docker { name: String, message: String },
    #[error(
        "{name}: the image `{image}` is not available locally (images are never pulled; build or load it first, and see `docker images`)"
    )]
    NoImage { name: String, image: String },
    #[error("{name}: the container from `{image}` did not start: {message}")]
    Start { name: String, image: String, message: String },
    #[error("{name}: not ready at {address} after {timeout:?}{log}")]
    NotReady { name: String, address: SocketAddr, timeout: Duration, log: String },
    #[error("interrupted while {name} was starting")]
    Cancelled { name: String },
}

/// A container stagegate manages (created or not yet).
pub struct ManagedContainer {
    label: String,
    /// The dependency's name (its `run.json` entry).
    entry: String,
    /// The container's name in Docker.
    docker_name: String,
    def: ContainerDef,
    run: Arc<RunFile>,
    container: tokio::sync::Mutex<Option<ContainerAsync<GenericImage>>>,
    id: Mutex<Option<String>>,
    address: Mutex<Option<SocketAddr>>,
    paused: AtomicBool,
    removed: AtomicBool,
    log: Option<PathBuf>,
}

/// Splits `repo:tag` (a registry port's colon is not a tag's).
fn split_image(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

fn docker(name: &str) -> Result<bollard::Docker, ContainerError> {
    bollard::Docker::connect_with_local_defaults()
        .map_err(|e| ContainerError::Docker { name: name.to_string(), message: e.to_string() })
}

/// A Docker container name for dependency `dep` of run `run`.
fn container_name(run: &str, dep: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '-' }).collect()
    };
    format!("stagegate-{}-{}", clean(run), clean(dep))
}

impl ManagedContainer {
    /// Prepares `def` as dependency `dep` (named `label` in messages), its output
    /// appended to `log`. Nothing is created until [`ManagedContainer::start`].
    pub fn new(label: &str, dep: &str, def: &ContainerDef, log: Option<PathBuf>, run: Arc<RunFile>) -> Self {
        ManagedContainer {
            label: label.to_string(),
            entry: dep.to_string(),
            docker_name: container_name(&run.run_id(), dep),
            def: def.clone(),
            run,
            container: tokio::sync::Mutex::new(None),
            id: Mutex::new(None),
            address: Mutex::new(None),
            paused: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            log,
        }
    }

    /// Creates and starts the container and waits until it is ready; gives way to `cancel`.
    pub async fn start(&self, cancel: &CancellationToken) -> Result<(), ContainerError> {
        let name = &self.label;
        let client = docker(name)?;
        let inspect = tokio::select! {
            _ = cancel.cancelled() => return Err(ContainerError::Cancelled { name: name.clone() }),
            r = tokio::time::timeout(Duration::from_secs(30), client.inspect_image(&self.def.image)) => r,
        };
        match inspect {
            Ok(Ok(_)) => {}
            Ok(Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })) => {
                return Err(ContainerError::NoImage { name: name.clone(), image: self.def.image.clone() });
            }
            Ok(Err(other)) => return Err(ContainerError::Docker { name: name.clone(), message: other.to_string() }),
            Err(_) => {
                return Err(ContainerError::Docker {
                    name: name.clone(),
                    message: "Docker did not answer in 30s".into(),
                });
            }
        }
        let (repo, tag) = split_image(&self.def.image);
        let mut request = GenericImage::new(repo, tag)
            .with_exposed_port(ContainerPort::Tcp(self.def.port))
            .with_wait_for(WaitFor::Nothing)
            .with_network("bridge")
            .with_container_name(self.docker_name.clone())
            .with_label(LABEL, self.run.run_id())
            .with_label(OWNER_LABEL, super::runfile::owner_label());
        for (k, v) in &self.def.env {
            request = request.with_env_var(k, v);
        }
        if let Some(cmd) = &self.def.command {
            request = request.with_cmd(cmd.clone());
        }
        // Written down before it exists: an interrupted creation is found by its name.
        self.run.container_starting(&self.entry, &self.docker_name).map_err(|e| ContainerError::Start {
            name: name.clone(),
            image: self.def.image.clone(),
            message: format!("it cannot be recorded in run.json ({e})"),
        })?;
        let started = tokio::select! {
            _ = cancel.cancelled() => return Err(ContainerError::Cancelled { name: name.clone() }),
            r = tokio::time::timeout(self.def.ready_timeout + Duration::from_secs(30), request.start()) => r,
        };
        let container = match started {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(ContainerError::Start {
                    name: name.clone(),
                    image: self.def.image.clone(),
                    message: e.to_string(),
                });
            }
            Err(_) => {
                return Err(ContainerError::Start {
                    name: name.clone(),
                    image: self.def.image.clone(),
                    message: "Docker did not start it in time".into(),
                });
            }
        };
        let id = container.id().to_string();
        self.run.container_started(&self.entry, &id);
        *lock(&self.id) = Some(id);
        let ip = container.get_bridge_ip_address().await.map_err(|e| ContainerError::Start {
            name: name.clone(),
            image: self.def.image.clone(),
            message: format!("no bridge address: {e}"),
        })?;
        *lock(&self.address) = Some(SocketAddr::new(ip, self.def.port));
        self.follow_logs(&container);
        *self.container.lock().await = Some(container);
        self.wait_ready(cancel).await
    }

    /// Copies the container's output into its log file while it runs.
    fn follow_logs(&self, container: &ContainerAsync<GenericImage>) {
        let Some(path) = self.log.clone() else { return };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        for mut stream in [container.stdout(true), container.stderr(true)] {
            let path = path.clone();
            tokio::spawn(async move {
                let file = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await;
                if let Ok(mut file) = file {
                    let _ = tokio::io::copy_buf(&mut stream, &mut file).await;
                }
            });
        }
    }

    fn log_tail(&self) -> String {
        let Some(path) = &self.log else { return String::new() };
        let text = crate::limits::read_bounded(path, 16 * 1024 * 1024).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        if tail.trim().is_empty() { String::new() } else { format!("; its last output:\n{tail}") }
    }

    async fn wait_ready(&self, cancel: &CancellationToken) -> Result<(), ContainerError> {
        let client = super::process::probe_client();
        let address = self.address();
        let path = self.def.ready_http.clone();
        match wait_until_ready(self.def.ready_timeout, cancel, || None, || answers(&client, address, path.as_deref()))
            .await
        {
            Readiness::Ready => Ok(()),
            Readiness::Cancelled => Err(ContainerError::Cancelled { name: self.label.clone() }),
            Readiness::Exited(_) | Readiness::TimedOut => Err(ContainerError::NotReady {
                name: self.label.clone(),
                address,
                timeout: self.def.ready_timeout,
                log: self.log_tail(),
            }),
        }
    }

    /// Where the server listens (the container's bridge address and port).
    pub fn address(&self) -> SocketAddr {
        lock(&self.address).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], self.def.port)))
    }

    /// The container's id, once created.
    pub fn id(&self) -> Option<String> {
        lock(&self.id).clone()
    }

    /// Sends `signal` (e.g. `SIGKILL`) to the container's main process.
    pub async fn kill(&self, signal: &str) {
        self.resume().await;
        let (Ok(client), Some(id)) = (docker(&self.label), self.id()) else { return };
        let options = bollard::query_parameters::KillContainerOptions { signal: signal.to_string() };
        let _ = tokio::time::timeout(Duration::from_secs(10), client.kill_container(&id, Some(options))).await;
    }

    /// Starts a killed container again and waits for it; returns its address, which
    /// may have changed.
    pub async fn restart(&self, cancel: &CancellationToken) -> Result<SocketAddr, ContainerError> {
        {
            let guard = self.container.lock().await;
            let Some(container) = guard.as_ref() else {
                return Err(ContainerError::Cancelled { name: self.label.clone() });
            };
            // A process killed by a signal takes a moment to be reported as exited.
            for _ in 0..100 {
                if !container.is_running().await.unwrap_or(false) || cancel.is_cancelled() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let started = tokio::select! {
                _ = cancel.cancelled() => return Err(ContainerError::Cancelled { name: self.label.clone() }),
                r = tokio::time::timeout(Duration::from_secs(30), container.start()) => r,
            };
            let failed = match started {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("Docker did not start it in 30s".to_string()),
            };
            if let Some(message) = failed {
                return Err(ContainerError::Start { name: self.label.clone(), image: self.def.image.clone(), message });
            }
            if let Ok(ip) = container.get_bridge_ip_address().await {
                *lock(&self.address) = Some(SocketAddr::new(ip, self.def.port));
            }
        }
        self.wait_ready(cancel).await?;
        Ok(self.address())
    }

    /// Freezes the container (`docker pause`).
    pub async fn pause(&self) {
        if let Some(c) = self.container.lock().await.as_ref()
            && matches!(tokio::time::timeout(Duration::from_secs(10), c.pause()).await, Ok(Ok(())))
        {
            self.paused.store(true, Ordering::SeqCst);
        }
    }

    /// Lets a paused container run again.
    pub async fn resume(&self) {
        if self.paused.swap(false, Ordering::SeqCst)
            && let Some(c) = self.container.lock().await.as_ref()
        {
            let _ = tokio::time::timeout(Duration::from_secs(10), c.unpause()).await;
        }
    }

    /// Whether the container is paused now.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Removes the container (forcefully: it is a throwaway), by its handle and by its
    /// name, so one whose creation was interrupted goes too.
    async fn remove(&self) {
        if self.removed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Removed by name below; the library's handle would try again on drop (and
        // complain, or race this removal), so it is let go without its drop.
        if let Some(c) = self.container.lock().await.take() {
            std::mem::forget(c);
        }
        if let Ok(client) = docker(&self.label) {
            let _ = tokio::time::timeout(CONTAINER_STOP, remove_by(&client, &self.docker_name)).await;
        }
        self.run.container_removed(&self.entry);
    }
}

async fn remove_by(client: &bollard::Docker, name_or_id: &str) -> bool {
    let options = bollard::query_parameters::RemoveContainerOptions { force: true, v: true, link: false };
    match client.remove_container(name_or_id, Some(options)).await {
        Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => true,
        Err(_) => false,
    }
}

#[async_trait::async_trait]
impl crate::teardown::Resource for ManagedContainer {
    fn label(&self) -> String {
        self.label.clone()
    }

    async fn stop(&self, _forced: bool) {
        // A throwaway server: removal is forceful either way, and bounded.
        self.remove().await;
    }

    fn stop_now(&self) {
        if self.removed.swap(true, Ordering::SeqCst) {
            return;
        }
        // No runtime may be entered from here (this can run on one of its threads while
        // unwinding): remove it from a thread of its own, within a deadline.
        if let Ok(mut slot) = self.container.try_lock()
            && let Some(c) = slot.take()
        {
            // Its own drop would schedule another removal; ours below is enough.
            std::mem::forget(c);
        }
        let name = self.docker_name.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let removed = tokio::runtime::Builder::new_current_thread().enable_all().build().is_ok_and(|rt| {
                rt.block_on(async {
                    let Ok(client) = docker("cleanup") else { return false };
                    tokio::time::timeout(CONTAINER_STOP, remove_by(&client, &name)).await.unwrap_or(false)
                })
            });
            let _ = tx.send(removed);
        });
        let _ = rx.recv_timeout(CONTAINER_STOP + Duration::from_secs(1));
        self.run.container_removed(&self.entry);
    }
}

/// Removes every container labelled with run `run` (for `stagegate cleanup`); returns
/// the name and id of each one removed, or why Docker could not be asked.
pub async fn remove_labelled(run: &str) -> Result<Vec<(String, String)>, String> {
    let client = docker("cleanup").map_err(|e| e.to_string())?;
    let filters = std::collections::HashMap::from([("label".to_string(), vec![super::cleanup::label_filter(run)])]);
    let options =
        bollard::query_parameters::ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
    let list = tokio::time::timeout(Duration::from_secs(30), client.list_containers(Some(options)))
        .await
        .map_err(|_| "Docker did not answer in 30s".to_string())?
        .map_err(|e| e.to_string())?;
    let mut removed = Vec::new();
    for c in list {
        let Some(id) = c.id else { continue };
        let name = c.names.and_then(|n| n.first().cloned()).unwrap_or_default().trim_start_matches('/').to_string();
        // The stagegate that started it still lives: a run alive somewhere, whatever a
        // record says.
        if c.labels.as_ref().and_then(|l| l.get(OWNER_LABEL)).is_some_and(|o| super::runfile::owner_alive(o)) {
            continue;
        }
        if remove_by(&client, &id).await {
            removed.push((name, id));
        }
    }
    Ok(removed)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_split_into_repository_and_tag() {
        assert_eq!(split_image("local/redis:7"), ("local/redis", "7"));
        assert_eq!(split_image("redis"), ("redis", "latest"));
        assert_eq!(split_image("registry:5000/team/redis"), ("registry:5000/team/redis", "latest"));
        assert_eq!(split_image("registry:5000/redis:7.2"), ("registry:5000/redis", "7.2"));
    }

    #[test]
    fn container_names_are_docker_names() {
        assert_eq!(
            container_name("orders-20261130T1200Z-ab12", "my store"),
            "stagegate-orders-20261130T1200Z-ab12-my-store"
        );
    }
}
