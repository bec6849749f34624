//! Container dependencies: a server started from a local image through testcontainers.
//!
//! Images are never pulled: a missing image is an error that says how to look for it.
//! The fault proxy reaches the container at its bridge address (no host port is
//! published), so the port answering means the server inside answers. Its output goes
//! to `NAME.log` in the report folder. `kill` sends a signal through the Docker API and
//! `pause` freezes it (`docker pause`); [`ManagedContainer::stop`] removes it on every
//! exit path, and `stagegate cleanup` removes one a killed run left behind, by its id.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use super::ContainerDef;

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
}

/// A running container stagegate manages.
pub struct ManagedContainer {
    name: String,
    def: ContainerDef,
    container: ContainerAsync<GenericImage>,
    address: Mutex<SocketAddr>,
    paused: AtomicBool,
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

impl ManagedContainer {
    /// Starts `def` as `name` (its output appended to `log`), and waits until it is ready.
    pub async fn start(
        name: &str,
        def: &ContainerDef,
        log: Option<PathBuf>,
    ) -> Result<ManagedContainer, ContainerError> {
        let client = docker(name)?;
        if let Err(e) = client.inspect_image(&def.image).await {
            return Err(match e {
                bollard::errors::Error::DockerResponseServerError { status_code: 404, .. } => {
                    ContainerError::NoImage { name: name.into(), image: def.image.clone() }
                }
                other => ContainerError::Docker { name: name.into(), message: other.to_string() },
            });
        }
        let (repo, tag) = split_image(&def.image);
        let mut request = GenericImage::new(repo, tag)
            .with_exposed_port(ContainerPort::Tcp(def.port))
            .with_wait_for(WaitFor::Nothing)
            .with_network("bridge")
            .with_label("stagegate.run", std::process::id().to_string());
        for (k, v) in &def.env {
            request = request.with_env_var(k, v);
        }
        if let Some(cmd) = &def.command {
            request = request.with_cmd(cmd.clone());
        }
        let container = request.start().await.map_err(|e| ContainerError::Start {
            name: name.into(),
            image: def.image.clone(),
            message: e.to_string(),
        })?;
        let ip = container.get_bridge_ip_address().await.map_err(|e| ContainerError::Start {
            name: name.into(),
            image: def.image.clone(),
            message: format!("no bridge address: {e}"),
        })?;
        let c = ManagedContainer {
            name: name.to_string(),
            def: def.clone(),
            container,
            address: Mutex::new(SocketAddr::new(ip, def.port)),
            paused: AtomicBool::new(false),
            log,
        };
        c.follow_logs();
        c.wait_ready().await?;
        Ok(c)
    }

    /// Copies the container's output into its log file while it runs.
    fn follow_logs(&self) {
        let Some(path) = self.log.clone() else { return };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        for mut stream in [self.container.stdout(true), self.container.stderr(true)] {
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
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        if tail.trim().is_empty() { String::new() } else { format!("; its last output:\n{tail}") }
    }

    async fn wait_ready(&self) -> Result<(), ContainerError> {
        let deadline = tokio::time::Instant::now() + self.def.ready_timeout;
        let client = reqwest::Client::new();
        loop {
            let address = self.address();
            let ready = match &self.def.ready_http {
                Some(path) => client
                    .get(format!("http://{address}{path}"))
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
                None => tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(address))
                    .await
                    .is_ok_and(|c| c.is_ok()),
            };
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ContainerError::NotReady {
                    name: self.name.clone(),
                    address,
                    timeout: self.def.ready_timeout,
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where the server listens (the container's bridge address and port).
    pub fn address(&self) -> SocketAddr {
        *self.address.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The container's id, for `run.json` and `stagegate cleanup`.
    pub fn id(&self) -> &str {
        self.container.id()
    }

    /// Sends `signal` (e.g. `SIGKILL`) to the container's main process.
    pub async fn kill(&self, signal: &str) {
        self.resume().await;
        if let Ok(client) = docker(&self.name) {
            let options = bollard::query_parameters::KillContainerOptions { signal: signal.to_string() };
            let _ = client.kill_container(self.id(), Some(options)).await;
        }
    }

    /// Starts a killed container again and waits for it; returns its address, which
    /// may have changed.
    pub async fn restart(&self) -> Result<SocketAddr, ContainerError> {
        // A process killed by a signal takes a moment to be reported as exited.
        for _ in 0..100 {
            if !self.container.is_running().await.unwrap_or(false) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.container.start().await.map_err(|e| ContainerError::Start {
            name: self.name.clone(),
            image: self.def.image.clone(),
            message: e.to_string(),
        })?;
        if let Ok(ip) = self.container.get_bridge_ip_address().await {
            *self.address.lock().unwrap_or_else(|p| p.into_inner()) = SocketAddr::new(ip, self.def.port);
        }
        self.wait_ready().await?;
        Ok(self.address())
    }

    /// Freezes the container (`docker pause`).
    pub async fn pause(&self) {
        if self.container.pause().await.is_ok() {
            self.paused.store(true, Ordering::SeqCst);
        }
    }

    /// Lets a paused container run again.
    pub async fn resume(&self) {
        if self.paused.swap(false, Ordering::SeqCst) {
            let _ = self.container.unpause().await;
        }
    }

    /// Whether the container is paused now.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Resumes and removes the container (stopping it first).
    pub async fn stop(self) {
        self.resume().await;
        let _ = self.container.rm().await;
    }
}

/// Removes the container `id` (for `stagegate cleanup`); `false` when Docker could not
/// be reached or refused.
pub async fn remove(id: &str) -> bool {
    let Ok(client) = docker("cleanup") else { return false };
    let options = bollard::query_parameters::RemoveContainerOptions { force: true, v: true, link: false };
    match client.remove_container(id, Some(options)).await {
        Ok(()) => true,
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => true,
        Err(_) => false,
    }
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
}
