//! HTTPS targets: stagegate drives a target that serves only HTTPS (its readiness
//! probe included), checks its certificate against the system's store or the CA given
//! in `SSL_CERT_FILE`, and a certificate it cannot trust stops the run as broken (no
//! verdict) with the way out, never a ROLLBACK of a healthy release. The certificates are made
//! by openssl for each test.

mod common;

use std::path::Path;
use std::process::Command;

/// A CA and a certificate it signed for 127.0.0.1, in `dir`: (ca.pem, cert.pem, key.pem).
fn certificates(dir: &Path) -> [String; 3] {
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "cert.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "cert.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    [p("ca.pem"), p("cert.pem"), p("key.pem")]
}

/// Runs the order service scenario over HTTPS; `trust` is the `SSL_CERT_FILE` given.
fn run_over_https(dir: &Path, trust: &str) -> (Option<i32>, String, serde_json::Value) {
    let [_, cert, key] = certificates(dir);
    let command = format!(
        "target.process.command=[python3, ../services/orders_service.py, --port, \"{{{{ port }}}}\", --tls, {cert}, {key}]"
    );
    let reports = dir.join("reports");
    let out = Command::new(common::bin())
        .current_dir(common::root())
        .env("SSL_CERT_FILE", trust)
        .args([
            "run",
            "--report-dir",
            reports.to_str().unwrap(),
            "tests/scenarios/http-service.yaml",
            "--set",
            "target.http.base_url=https://127.0.0.1:{{ port }}",
            "--set",
            &command,
        ])
        .output()
        .expect("the binary runs");
    let (stdout, stderr) = common::text(&out);
    (out.status.code(), format!("{stdout}\n{stderr}"), common::only_report(&reports))
}

#[test]
fn an_https_target_is_driven_with_its_certificate_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let (code, said, report) = run_over_https(dir.path(), ca.to_str().unwrap());
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(report["verdict"], "PROMOTE", "{said}");
    let acked = report["stages"][0]["metrics"]["data"]["acked"].as_u64().unwrap_or(0);
    assert!(acked >= 150, "acknowledged over HTTPS: {acked}\n{said}");
}

#[test]
fn a_target_certificate_that_is_not_trusted_is_no_evidence_against_the_release() {
    let dir = tempfile::tempdir().unwrap();
    // A store that holds no CA: the target's certificate cannot be trusted.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let (code, said, report) = run_over_https(dir.path(), empty.to_str().unwrap());
    assert!(report["verdict"].is_null(), "{said}");
    assert_eq!(code, Some(4), "{said}");
    assert!(said.contains("SSL_CERT_FILE"), "the reason names the way out:\n{said}");
}

/// Regression: with no certificate store at all (the `FROM scratch` image), no HTTP
/// client could be built, and even a plain-HTTP run broke ("builder error").
#[test]
fn a_plain_http_run_needs_no_certificate_store() {
    let dir = tempfile::tempdir().unwrap();
    let reports = dir.path().join("reports");
    let missing = dir.path().join("none");
    let out = Command::new(common::bin())
        .current_dir(common::root())
        .env("SSL_CERT_FILE", &missing)
        .env("SSL_CERT_DIR", &missing)
        .args(["run", "-q", "--report-dir", reports.to_str().unwrap(), "tests/scenarios/http-service.yaml"])
        .output()
        .expect("the binary runs");
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
}

#[test]
fn https_toward_a_plain_http_target_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let reports = dir.path().join("reports");
    let out = Command::new(common::bin())
        .current_dir(common::root())
        .args([
            "run",
            "--report-dir",
            reports.to_str().unwrap(),
            "tests/scenarios/http-service.yaml",
            "--set",
            "target.http.base_url=https://127.0.0.1:{{ port }}",
        ])
        .output()
        .expect("the binary runs");
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(4), "{stdout}\n{stderr}");
    assert!(stdout.contains("is it `http://`?") || stderr.contains("is it `http://`?"), "{stdout}\n{stderr}");
}
