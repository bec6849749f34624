//! The JSON reporter: writes `report.json` into the run's report folder when the run
//! finishes, however it finishes, with the scenario's secrets masked value by value.

use std::path::PathBuf;

use super::{Event, Reporter};
use crate::secrets::Secrets;

/// Writes the final report as pretty JSON.
pub struct JsonReporter {
    dir: PathBuf,
    /// The scenario's secrets, masked value by value (the file stays JSON).
    secrets: Secrets,
    /// The path written, or why writing failed.
    pub written: Option<Result<PathBuf, String>>,
}

impl JsonReporter {
    /// A reporter writing into `dir` (created if missing).
    pub fn new(dir: PathBuf, secrets: Secrets) -> Self {
        JsonReporter { dir, secrets, written: None }
    }
}

impl Reporter for JsonReporter {
    fn event(&mut self, event: &Event) {
        let (Event::Finished(report) | Event::Judged(report, _)) = event else {
            return;
        };
        let path = self.dir.join("report.json");
        let result = write(&self.dir, &path, report, &self.secrets)
            .map(|_| path.clone())
            .map_err(|e| format!("cannot write {}: {e}", path.display()));
        self.written = Some(result);
    }
}

fn write(
    dir: &std::path::Path,
    path: &std::path::Path,
    report: &super::RunReport,
    secrets: &Secrets,
) -> std::io::Result<()> {
    use super::files::{Format, document, render};
    std::fs::create_dir_all(dir)?;
    let doc = document(report, secrets).map_err(std::io::Error::other)?;
    let bytes = render(Format::Json, &doc, &[]).map_err(std::io::Error::other)?;
    crate::deps::runfile::write_atomically(path, &bytes)
}
