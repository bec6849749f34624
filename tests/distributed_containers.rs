//! A distributed run across hosts: a controller, three workers and the system under test
//! each in a container of their own on a private Docker network, through
//! testcontainers, from images built here (`tests/images/stagegate.sh`,
//! `tests/images/python.sh`; nothing is pulled).
//!
//! Checks: the merged counts equal the sum of the workers' and what the service stored;
//! the merged p99 is the p99 of the union of the workers' samples; one process with the
//! same scenario and seed reaches the same verdict; a worker killed mid-stage leaves that
//! stage INCONCLUSIVE with the report written; no container or network is left.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use testcontainers::core::{ContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

const TOKEN: &str = "container-worker-token-0123";
const PYTHON_IMAGE: &str = "stagegate-test/python:local";

/// Builds the images; returns the stagegate one's name.
fn images() -> String {
    let python = Command::new("bash")
        .arg("tests/images/python.sh")
        .arg(PYTHON_IMAGE)
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(python.status.success(), "{:?}", common::text(&python));
    let out = Command::new("bash")
        .arg("tests/images/stagegate.sh")
        .arg(common::bin())
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", common::text(&out));
    String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap().to_string()
}

fn split(image: &str) -> (&str, &str) {
    image.rsplit_once(':').unwrap()
}

struct Net {
    name: String,
    suffix: String,
}

/// The order service, as `sut-SUFFIX` on the network (and on a host port).
async fn service(net: &Net, n: u32) -> ContainerAsync<GenericImage> {
    let (repo, tag) = split(PYTHON_IMAGE);
    GenericImage::new(repo, tag)
        .with_exposed_port(ContainerPort::Tcp(8080))
        .with_wait_for(WaitFor::message_on_stdout("orders service on port"))
        .with_network(&net.name)
        .with_container_name(format!("sut{n}-{}", net.suffix))
        .with_mount(
            Mount::bind_mount(common::root().join("tests/services").to_str().unwrap(), "/app")
                .with_access_mode(testcontainers::core::AccessMode::ReadOnly),
        )
        .with_cmd(["/app/orders_service.py", "--port", "8080", "--host", "0.0.0.0"])
        .start()
        .await
        .expect("the order service container starts")
}

/// Every stored order's id, listed through the service's host port.
async fn stored(sut: &ContainerAsync<GenericImage>) -> Vec<String> {
    let port = sut.get_host_port_ipv4(8080).await.unwrap();
    let text = stagegate::http_client::client()
        .get(format!("http://127.0.0.1:{port}/orders.jsonl"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["order_id"].as_str().unwrap().to_string())
        .collect()
}

/// The controller (`ctl-SUFFIX`), its reports in `reports` (as `/reports/run`).
async fn controller(net: &Net, image: &str, sut: u32, reports: &Path) -> ContainerAsync<GenericImage> {
    let (repo, tag) = split(image);
    GenericImage::new(repo, tag)
        .with_wait_for(WaitFor::message_on_stderr("start each: stagegate worker"))
        .with_network(&net.name)
        .with_container_name(format!("ctl{sut}-{}", net.suffix))
        .with_mount(
            Mount::bind_mount(common::root().to_str().unwrap(), "/repo")
                .with_access_mode(testcontainers::core::AccessMode::ReadOnly),
        )
        .with_mount(Mount::bind_mount(reports.to_str().unwrap(), "/reports"))
        .with_cmd([
            "run".to_string(),
            "/repo/tests/scenarios/distributed.yaml".into(),
            "--set".into(),
            format!("target.http.base_url=http://sut{sut}-{}:8080", net.suffix),
            "--workers".into(),
            "3".into(),
            "--controller-listen".into(),
            "0.0.0.0:7400".into(),
            "--worker-token".into(),
            TOKEN.into(),
            "--out".into(),
            "/reports/run".into(),
        ])
        .start()
        .await
        .expect("the controller container starts")
}

async fn start_workers(net: &Net, image: &str, ctl: u32) -> Vec<ContainerAsync<GenericImage>> {
    let (repo, tag) = split(image);
    let mut out = Vec::new();
    for i in 0..3 {
        let w = GenericImage::new(repo, tag)
            .with_wait_for(WaitFor::message_on_stderr("joined the controller"))
            .with_network(&net.name)
            .with_container_name(format!("worker{ctl}-{i}-{}", net.suffix))
            .with_cmd([
                "worker".to_string(),
                "--controller".into(),
                format!("http://ctl{ctl}-{}:7400", net.suffix),
                "--token".into(),
                TOKEN.into(),
                "--index".into(),
                i.to_string(),
            ])
            .start()
            .await
            .expect("a worker container starts");
        out.push(w);
    }
    out
}

/// Waits for a container's exit (at most `limit`); its exit code.
async fn exit_of(c: &ContainerAsync<GenericImage>, limit: Duration) -> i64 {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(code) = c.exit_code().await.unwrap() {
            return code;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} did not exit in time", c.id());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn logs(c: &ContainerAsync<GenericImage>) -> String {
    String::from_utf8_lossy(&c.stderr_to_vec().await.unwrap_or_default()).into_owned()
}

fn decode(encoded: &str) -> hdrhistogram::Histogram<u64> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
    hdrhistogram::serialization::Deserializer::new().deserialize(&mut bytes.as_slice()).unwrap()
}

fn report(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run/report.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_and_three_worker_containers_judge_as_one_process_does() {
    common::require_docker();
    let image = images();
    let suffix = format!("{}-{}", std::process::id(), rand_suffix());
    let net = Net { name: format!("stagegate-dist-{suffix}"), suffix: suffix.clone() };
    let tmp = tempfile::tempdir().unwrap();
    {
        // One process, on this host, against a service container of its own.
        let single_sut = service(&net, 0).await;
        let port = single_sut.get_host_port_ipv4(8080).await.unwrap();
        let single_dir = tmp.path().join("single");
        let base = format!("target.http.base_url=http://127.0.0.1:{port}");
        let single_run = tokio::task::spawn_blocking(move || {
            let out = common::stagegate(&[
                "run",
                "tests/scenarios/distributed.yaml",
                "--set",
                &base,
                "--out",
                single_dir.to_str().unwrap(),
                "-q",
            ]);
            (
                out.status.code(),
                serde_json::from_str::<Value>(&std::fs::read_to_string(single_dir.join("report.json")).unwrap())
                    .unwrap(),
            )
        })
        .await
        .unwrap();
        let (single_code, single) = single_run;
        let single_stored = stored(&single_sut).await;

        // A controller and three workers, each a container.
        let sut = service(&net, 1).await;
        let reports = tmp.path().join("distributed");
        std::fs::create_dir_all(&reports).unwrap();
        let ctl = controller(&net, &image, 1, &reports).await;
        let ws = start_workers(&net, &image, 1).await;
        let code = exit_of(&ctl, Duration::from_secs(180)).await;
        let ctl_log = logs(&ctl).await;
        for w in &ws {
            assert_eq!(exit_of(w, Duration::from_secs(60)).await, 0, "{}", logs(w).await);
        }
        let doc = report(&reports);
        assert_eq!(Some(code as i32), single_code, "{ctl_log}");
        assert_eq!(doc["verdict"], single["verdict"], "{ctl_log}");
        let stages = doc["stages"].as_array().unwrap();
        assert_eq!(stages.len(), 2);
        let workers = doc["distributed"]["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 3);
        let hosts: std::collections::BTreeSet<&str> = workers.iter().map(|w| w["host"].as_str().unwrap()).collect();
        assert_eq!(hosts.len(), 3, "three hosts: {hosts:?}");

        // Merged counts = the sum of the workers' = what the service stored.
        let stored_here = stored(&sut).await;
        let mut acked = 0;
        for (s, stage) in stages.iter().enumerate() {
            assert!(stage.get("workers_incomplete").is_none(), "{}", stage["workers_incomplete"]);
            let sum = |field: &str| workers.iter().map(|w| w["stages"][s][field].as_u64().unwrap()).sum::<u64>();
            let m = &stage["metrics"];
            assert_eq!(sum("sent"), m["data"]["sent"].as_u64().unwrap() + m["warmup_data"]["sent"].as_u64().unwrap());
            assert_eq!(
                sum("acked"),
                m["data"]["acked"].as_u64().unwrap() + m["warmup_data"]["acked"].as_u64().unwrap()
            );
            acked += sum("acked");
            assert_eq!(
                m["data"], single["stages"][s]["metrics"]["data"],
                "stage {s} data counts differ from one process's"
            );
            // The merged p99 is the union's: the workers' histograms added.
            let mut union = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
            for w in workers {
                union.add(decode(w["stages"][s]["histogram"].as_str().unwrap())).unwrap();
            }
            let whole = stage["histograms"].as_array().unwrap().iter().find(|h| h["variant"].is_null()).unwrap();
            let whole = decode(whole["encoded"].as_str().unwrap());
            assert_eq!(union.len(), whole.len());
            assert_eq!(union.value_at_quantile(0.99), whole.value_at_quantile(0.99));
            let p99 = m["latency"]["p99"].as_f64().unwrap();
            assert!((p99 - union.value_at_quantile(0.99) as f64 / 1000.0).abs() < 1e-6, "{p99}");
        }
        assert_eq!(acked as usize, stored_here.len());
        let mut a = stored_here.clone();
        let mut b = single_stored.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b, "the workers together stored other orders than one process");

        // A worker killed (SIGKILL) mid-stage: that stage is INCONCLUSIVE, the report is
        // written.
        let sut = service(&net, 2).await;
        let reports = tmp.path().join("killed");
        std::fs::create_dir_all(&reports).unwrap();
        let ctl = controller(&net, &image, 2, &reports).await;
        let ws = start_workers(&net, &image, 2).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !logs(&ctl).await.contains("stage 1 `baseline` started") {
            assert!(tokio::time::Instant::now() < deadline, "{}", logs(&ctl).await);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed = Command::new("docker").args(["kill", ws[1].id()]).output().unwrap();
        assert!(killed.status.success(), "{:?}", common::text(&killed));
        let code = exit_of(&ctl, Duration::from_secs(180)).await;
        assert_eq!(code, 3, "{}", logs(&ctl).await);
        let doc = report(&reports);
        assert_eq!(doc["verdict"], "INCONCLUSIVE");
        let baseline = &doc["stages"][0];
        assert!(baseline["workers_incomplete"].as_str().unwrap().contains("worker 1 stopped reporting"), "{baseline}");
        assert!(doc["assessments"].as_array().unwrap().iter().all(|a| a["outcome"] == "inconclusive"));
        drop(sut);
    }
    // Everything dropped: no container of this test and no network remain.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ps = Command::new("docker").args(["ps", "-a", "--format", "{{.Names}}"]).output().unwrap();
    let left: Vec<String> =
        String::from_utf8_lossy(&ps.stdout).lines().filter(|n| n.ends_with(&suffix)).map(String::from).collect();
    assert!(left.is_empty(), "containers left: {left:?}");
    let nets = Command::new("docker").args(["network", "ls", "--format", "{{.Name}}"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&nets.stdout).lines().any(|n| n == net.name), "the network {} is left", net.name);
}

fn rand_suffix() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos())
}
