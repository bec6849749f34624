//! What a newcomer finds from the command line alone: the version with the revision it
//! was built from, an example under every subcommand's help, completions and a manual.

mod common;

use common::{stagegate, text};

const SUBCOMMANDS: [&str; 11] =
    ["run", "validate", "plan", "schema", "proxy", "kv-store", "cleanup", "data", "completions", "man", "worker"];

#[test]
fn version_names_the_revision_it_was_built_from() {
    let out = stagegate(&["--version"]);
    let stdout = text(&out).0;
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout.starts_with(&format!("stagegate {} (rev ", env!("CARGO_PKG_VERSION"))), "{stdout}");
    let head = std::process::Command::new("git").args(["rev-parse", "--short=10", "HEAD"]).output();
    if let Some(head) = head.ok().filter(|h| h.status.success()) {
        let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
        assert!(stdout.contains(&format!("(rev {head})")), "built from {head}: {stdout}");
    }
}

#[test]
fn every_subcommand_shows_an_example_in_its_help() {
    for sub in SUBCOMMANDS {
        let out = stagegate(&[sub, "--help"]);
        let stdout = text(&out).0;
        assert_eq!(out.status.code(), Some(0), "{sub}");
        assert!(stdout.contains("Example"), "`stagegate {sub} --help` has no example:\n{stdout}");
        assert!(!stdout.contains("(default 10) [default: 10]"), "{stdout}");
    }
    let top = text(&stagegate(&["--help"])).0;
    assert!(top.contains("removes its containers"), "cleanup removes containers too: {top}");
}

#[test]
fn completions_and_the_manual_cover_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let out = stagegate(&["completions", shell]);
        let script = text(&out).0;
        assert_eq!(out.status.code(), Some(0), "{shell}");
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell} completions lack `{sub}`");
        }
    }
    let out = stagegate(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
    // roff writes a hyphen as `\-`.
    let man = text(&stagegate(&["man"])).0.replace("\\-", "-");
    assert!(man.contains(".TH stagegate"), "{man}");
    for sub in SUBCOMMANDS {
        assert!(man.contains(sub), "the manual lacks `{sub}`");
    }
}
