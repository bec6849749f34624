//! The JSON reporter: writes `report.json` into the run's report folder when the run
//! finishes, however it finishes.

use std::path::PathBuf;

use super::{Event, Reporter};

/// Writes the final report as pretty JSON.
pub struct JsonReporter {
    dir: PathBuf,
    /// `(name, value)` of the scenario's secrets, masked in the file.
    secrets: Vec<(String, String)>,
    /// The path written, or why writing failed.
    pub written: Option<Result<PathBuf, String>>,
}

impl JsonReporter {
    /// A reporter writing into `dir` (created if missing).
    pub fn new(dir: PathBuf, secrets: Vec<(String, String)>) -> Self {
        JsonReporter { dir, secrets, written: None }
    }
}

impl Reporter for JsonReporter {
    fn event(&mut self, event: &Event) {
        let Event::Finished(report) = event else {
            return;
        };
        let path = self.dir.join("report.json");
        let result = std::fs::create_dir_all(&self.dir)
            .and_then(|_| {
                let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
                std::fs::write(&path, crate::scenario::mask(&text, &self.secrets) + "\n")
            })
            .map(|_| path.clone())
            .map_err(|e| format!("cannot write {}: {e}", path.display()));
        self.written = Some(result);
    }
}
