//! Build script: records the git revision the binary was built from, for `--version`
//! (`stagegate 0.1.0 (rev 1a2b3c4)`), or `unknown` outside a git checkout (a crate
//! installed from a registry).

use std::path::Path;
use std::process::Command;

fn main() {
    let revision = Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=STAGEGATE_REVISION={revision}");
    // Built again when the checked-out commit moves; a missing file would rebuild every time.
    for watched in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if Path::new(watched).exists() {
            println!("cargo:rerun-if-changed={watched}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
