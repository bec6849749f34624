//! `deploy/kubernetes/`: every manifest validates against the Kubernetes OpenAPI schemas
//! (strict: no unknown field) with `kubernetes-validate` (PyPI, schemas bundled; the
//! test command installs it), the pieces agree with each other (the worker count, the
//! Service, the token, the controller's port), and the scenario in the ConfigMap is one
//! stagegate accepts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const MANIFESTS: [&str; 4] = ["secret.yaml", "scenario.yaml", "controller.yaml", "workers.yaml"];

fn dir() -> PathBuf {
    common::root().join("deploy/kubernetes")
}

fn validate(files: &[PathBuf]) -> std::process::Output {
    common::require_python(&["kubernetes_validate"], "kubernetes-validate==1.37.0");
    Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.30"])
        .args(files)
        .output()
        .expect("kubernetes-validate runs (scripts/test installs it)")
}

/// The documents of a YAML file, as JSON.
fn documents(path: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", common::text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The value of `--name=VALUE` among a container's args.
fn arg<'a>(args: &'a Value, name: &str) -> &'a str {
    args.as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {args}"))
}

#[test]
fn the_manifests_validate_against_the_kubernetes_schemas() {
    let files: Vec<PathBuf> = MANIFESTS.iter().map(|f| dir().join(f)).collect();
    let out = validate(&files);
    let (stdout, stderr) = common::text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    // Six resources, each checked.
    assert_eq!(
        stdout.matches(" passed for resource ").count() + stderr.matches(" passed for resource ").count(),
        6,
        "{stdout}{stderr}"
    );

    // The validator does reject what is wrong: a misspelt field in a copy.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("workers.yaml");
    let text = std::fs::read_to_string(dir().join("workers.yaml")).unwrap();
    std::fs::write(&broken, text.replace("completionMode: Indexed", "completionMod: Indexed")).unwrap();
    let out = validate(&[broken]);
    assert!(!out.status.success(), "a misspelt field passed: {:?}", common::text(&out));
}

#[test]
fn controller_workers_service_and_token_agree() {
    let docs: Vec<Value> = MANIFESTS.iter().flat_map(|f| documents(&dir().join(f))).collect();
    let job = find(&docs, "Job", "stagegate-controller");
    let controller = &job["spec"]["template"]["spec"]["containers"][0];
    let workers = find(&docs, "Job", "stagegate-workers");
    let worker = &workers["spec"]["template"]["spec"]["containers"][0];

    // As many workers as the controller waits for, each with its own index.
    let n: u64 = arg(&controller["args"], "--workers").parse().unwrap();
    assert_eq!(workers["spec"]["completionMode"], "Indexed");
    assert_eq!(workers["spec"]["completions"].as_u64(), Some(n));
    assert_eq!(workers["spec"]["parallelism"].as_u64(), Some(n));
    assert_eq!(worker["args"][0], "worker");
    assert!(!worker.to_string().contains("--index"), "the index comes from JOB_COMPLETION_INDEX");

    // The workers reach the controller through the Service, on the port it listens on.
    let service = find(&docs, "Service", "stagegate-controller");
    let listen = arg(&controller["args"], "--controller-listen");
    let port: u64 = listen.rsplit_once(':').unwrap().1.parse().unwrap();
    assert_eq!(service["spec"]["ports"][0]["port"].as_u64(), Some(port));
    assert_eq!(controller["ports"][0]["containerPort"].as_u64(), Some(port));
    assert_eq!(arg(&worker["args"], "--controller"), format!("http://stagegate-controller:{port}"));
    let selector = service["spec"]["selector"].as_object().unwrap();
    let labels = &job["spec"]["template"]["metadata"]["labels"];
    for (k, v) in selector {
        assert_eq!(&labels[k], v, "the Service selects the controller's pod by {k}");
    }
    let worker_labels = &workers["spec"]["template"]["metadata"]["labels"];
    assert!(selector.iter().any(|(k, v)| &worker_labels[k] != v), "the Service must not select the workers");

    // Both read the token from the same Secret key, as STAGEGATE_WORKER_TOKEN.
    let secret = find(&docs, "Secret", "stagegate-worker-token");
    let token_ref = |c: &Value| {
        let env = c["env"].as_array().unwrap().iter().find(|e| e["name"] == "STAGEGATE_WORKER_TOKEN").unwrap();
        env["valueFrom"]["secretKeyRef"].clone()
    };
    assert_eq!(token_ref(controller), token_ref(worker));
    let key = token_ref(controller)["key"].as_str().unwrap().to_string();
    // The example Secret's token is one stagegate refuses: applied by mistake, it fails
    // at once rather than run with a token anyone can read here.
    let example = secret["stringData"][&key].as_str().unwrap();
    let out = common::stagegate(&["worker", "--controller", "http://127.0.0.1:9", "--token", example, "--index", "0"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", common::text(&out));
    // And `kubectl apply -k` leaves the user's own Secret and ConfigMap alone.
    let kustomization = std::fs::read_to_string(dir().join("kustomization.yaml")).unwrap();
    assert!(!kustomization.contains("- secret.yaml") && !kustomization.contains("- scenario.yaml"));

    // The reports land on the volume, and the scenario is the ConfigMap's.
    let mounts = controller["volumeMounts"].as_array().unwrap();
    let reports = arg(&controller["args"], "--report-dir");
    assert!(mounts.iter().any(|m| m["mountPath"] == reports));
    let scenario_path = controller["args"][1].as_str().unwrap();
    let scenario_dir = Path::new(scenario_path).parent().unwrap().to_str().unwrap();
    let mount = mounts.iter().find(|m| m["mountPath"] == scenario_dir).unwrap();
    let volume = job["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let config = find(&docs, "ConfigMap", volume["configMap"]["name"].as_str().unwrap());

    // That scenario is valid as it stands.
    let tmp = tempfile::tempdir().unwrap();
    for (name, text) in config["data"].as_object().unwrap() {
        std::fs::write(tmp.path().join(name), text.as_str().unwrap()).unwrap();
    }
    let file = tmp.path().join(Path::new(scenario_path).file_name().unwrap());
    let out = common::stagegate(&["validate", file.to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", common::text(&out));
}
