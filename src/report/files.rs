//! The file formats a run can leave besides report.json, chosen with `--report
//! FORMAT[=PATH]` (repeatable): `junit`, `markdown`, `html`, `hlog`. Each renders from the
//! report document (report.json's content, secrets already masked), so `stagegate
//! report` renders a saved run exactly as the run itself would have.
//!
//! A path is taken relative to the run's folder; without one each format has its own
//! name there. With `markdown`, a set `GITHUB_STEP_SUMMARY` also receives the summary
//! (appended, once, when the run is over).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Event, Reporter};
use crate::secrets::Secrets;

/// A file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Junit,
    Markdown,
    Html,
    Hlog,
}

impl Format {
    pub const NAMES: [&'static str; 5] = ["json", "junit", "markdown", "html", "hlog"];

    /// The file it gets in the run's folder unless a path is given.
    pub fn default_name(self) -> &'static str {
        match self {
            Format::Json => "report.json",
            Format::Junit => "junit.xml",
            Format::Markdown => "summary.md",
            Format::Html => "report.html",
            Format::Hlog => "latency.hlog",
        }
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// How the Markdown summary links to it.
    pub fn label(self) -> &'static str {
        match self {
            Format::Json => "report.json (everything, for tools)",
            Format::Junit => "JUnit XML",
            Format::Markdown => "this summary",
            Format::Html => "HTML report with plots",
            Format::Hlog => "HdrHistogram interval log",
        }
    }
}

/// One `--report FORMAT[=PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub format: Format,
    pub path: Option<PathBuf>,
}

impl std::str::FromStr for Wanted {
    type Err = String;

    fn from_str(text: &str) -> Result<Wanted, String> {
        let (name, path) = match text.split_once('=') {
            Some((n, "")) => return Err(format!("`{n}=` names no file; write `{n}` or `{n}=PATH`")),
            Some((n, p)) => (n, Some(PathBuf::from(p))),
            None => (text, None),
        };
        let format = match name {
            "json" => Format::Json,
            "junit" => Format::Junit,
            "markdown" | "md" => Format::Markdown,
            "html" => Format::Html,
            "hlog" => Format::Hlog,
            other => {
                return Err(format!("unknown report format `{other}`; formats are {}", Format::NAMES.join(", ")));
            }
        };
        Ok(Wanted { format, path })
    }
}

/// Where `wanted` goes for a run whose folder is `dir`.
pub fn target(dir: &Path, wanted: &Wanted) -> PathBuf {
    match &wanted.path {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => dir.join(p),
        None => dir.join(wanted.format.default_name()),
    }
}

/// Checks, before anything runs, that each file in `wanted` can be written: a path
/// inside the run's folder always can (its sub-folders are made there); one outside it
/// (absolute, or leaving it with `..`) needs an existing folder where a file can be
/// made. A path must name a file (not a folder), and only a regular file is replaced
/// (never a link, a device or a pipe). Two formats may not share a file (links
/// resolved), nor take the place of report.json, the run's record, its logs or the
/// `latest` link.
pub fn check_paths(run_dir: &Path, wanted: &[Wanted], flag: &str) -> Result<(), String> {
    let json = where_it_lands(&run_dir.join("report.json"));
    let mut seen: Vec<(PathBuf, &Wanted)> = vec![(json, &JSON)];
    for w in wanted {
        let named = || match &w.path {
            Some(p) => format!("{flag} {}={}", w.format.name(), p.display()),
            None => format!("{flag} {}", w.format.name()),
        };
        let path = match &w.path {
            None => PathBuf::from(w.format.default_name()),
            Some(p) => p.clone(),
        };
        let text = path.to_string_lossy();
        let inside = path.is_relative() && !path.components().any(|c| matches!(c, std::path::Component::ParentDir));
        let full = lexical(&run_dir.join(&path));
        if path.file_name().is_none()
            || text.ends_with('/')
            || text.ends_with("/.")
            || text.ends_with("/..")
            || text == "."
            || full.is_dir()
        {
            return Err(format!("{}: names a folder; name a file", named()));
        }
        let name = full.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.len() > 200 {
            return Err(format!("{}: a file name of {} bytes is too long (at most 200)", named(), name.len()));
        }
        if let Ok(m) = std::fs::symlink_metadata(&full)
            && !m.is_file()
        {
            return Err(format!(
                "{}: {} is a link, a device or a pipe; stagegate replaces only regular files",
                named(),
                full.display()
            ));
        }
        let parent = full.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let root = lexical(run_dir);
        // A run's record and lock are never a report's name, wherever the path leads
        // (through a link, it may lead into this run's folder or another's).
        if name == "run.json" || name == "run.lock" {
            return Err(format!("{}: {name} is the name of a run's own record or lock", named()));
        }
        if full.as_os_str().len() > 3000 {
            return Err(format!("{}: a path of {} bytes is too long", named(), full.as_os_str().len()));
        }
        if parent == root && name.ends_with(".log") {
            return Err(format!("{}: {name} in the run's folder is the run's own (its record, lock or logs)", named()));
        }
        if name == "latest" && Some(parent) == root.parent() {
            return Err(format!("{}: `latest` is the link to the newest run", named()));
        }
        if !inside {
            if !parent.is_dir() {
                return Err(format!(
                    "{}: the folder {} does not exist (stagegate makes folders only inside the run's folder)",
                    named(),
                    parent.display()
                ));
            }
            // A file must be creatable there (a read-only mount, /proc, /sys refuse)...
            let probe = parent.join(format!(".stagegate-probe-{}", std::process::id()));
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
                Ok(_) => {
                    let _ = std::fs::remove_file(&probe);
                }
                Err(e) => return Err(format!("{}: cannot write in {}: {e}", named(), parent.display())),
            }
            // ...and a file already there replaceable (not immutable).
            if full.is_file()
                && let Err(e) = std::fs::OpenOptions::new().append(true).open(&full)
            {
                return Err(format!("{}: cannot replace {}: {e}", named(), full.display()));
            }
        }
        let key = where_it_lands(&full);
        if let Some((_, other)) = seen.iter().find(|(p, _)| *p == key)
            && other.format != w.format
        {
            return Err(format!("{}: {} is where the {} report goes", named(), key.display(), other.format.name()));
        }
        seen.push((key, w));
    }
    Ok(())
}

/// The file `path` names once links in its folders are followed (folders that do not
/// exist yet are taken as written).
fn where_it_lands(path: &Path) -> PathBuf {
    let path = lexical(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
    match (path.parent().and_then(|p| std::fs::canonicalize(p).ok()), path.file_name()) {
        (Some(dir), Some(name)) => dir.join(name),
        _ => path,
    }
}

/// `path` with `.` and `..` resolved by its text (the run's folder may not exist yet).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// Appends the Markdown summary of `doc` to the job summary file at `path`, on a line
/// of its own; never waits (a pipe with no reader is an error, not a hang).
fn append_step_summary(path: &Path, doc: &Value) -> std::io::Result<()> {
    use std::io::Write;
    let mut md = render(Format::Markdown, doc, &[]).unwrap_or_default();
    let mut f = open_step_summary(path)?;
    if f.metadata().is_ok_and(|m| m.is_file() && m.len() > 0) {
        md.splice(0..0, *b"\n");
    }
    f.write_all(&md)
}

/// The job summary file, opened to append (created if missing) without ever waiting:
/// a pipe with no reader is an error, not a hang.
fn open_step_summary(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().append(true).create(true).custom_flags(nix::libc::O_NONBLOCK).open(path)
}

/// Checks, before a run, that a set `GITHUB_STEP_SUMMARY` can take the summary when
/// `wanted` asks for Markdown: its folder exists, and it is not a folder itself.
pub fn check_step_summary(wanted: &[Wanted]) -> Result<(), String> {
    let Some(summary) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|s| !s.is_empty()) else { return Ok(()) };
    if !wanted.iter().any(|w| w.format == Format::Markdown) {
        return Ok(());
    }
    let path = Path::new(&summary);
    let say = |why: String| format!("GITHUB_STEP_SUMMARY ({}): {why}", path.display());
    if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_file() && !m.file_type().is_symlink()) || path.is_dir() {
        return Err(say("not a regular file; it names the file the summary is appended to".into()));
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(say(format!("the folder {} does not exist", parent.display())));
    }
    // Opened as the end of the run will open it, nothing written.
    {
        match open_step_summary(path) {
            Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => {}
            Ok(_) => return Err(say("not a regular file".into())),
            Err(e) => return Err(say(format!("cannot append to it: {e}"))),
        }
    }
    Ok(())
}

/// report.json, always written.
const JSON: Wanted = Wanted { format: Format::Json, path: None };

/// The report document of `report`: what report.json holds, secrets masked.
pub fn document(report: &super::RunReport, secrets: &Secrets) -> Result<Value, String> {
    let mut doc = serde_json::to_value(report).map_err(|e| e.to_string())?;
    secrets.mask_json(&mut doc);
    Ok(doc)
}

/// Renders one format of `doc`; `others` are the run's other files, for links.
pub fn render(format: Format, doc: &Value, others: &[(String, String)]) -> Result<Vec<u8>, String> {
    match format {
        Format::Json => {
            let mut text = serde_json::to_string_pretty(doc).map_err(|e| e.to_string())?;
            text.push('\n');
            Ok(text.into_bytes())
        }
        Format::Junit => super::junit::render(doc).map(String::into_bytes),
        Format::Markdown => Ok(super::markdown::render(doc, others).into_bytes()),
        Format::Html => super::html::render(doc).map(String::into_bytes),
        Format::Hlog => super::hlog::render(doc).map(String::into_bytes),
    }
}

/// Writes every format in `wanted` for the run `doc` into `dir`; returns each file
/// written, or why it could not be.
pub fn write_all(doc: &Value, dir: &Path, wanted: &[Wanted]) -> Vec<Result<PathBuf, String>> {
    // Links from the summary: relative when it sits in the run's folder, else absolute.
    // Links from the summary: relative when both sit in the run's folder (it can be
    // uploaded or moved whole), else absolute. The run's other files are linked too,
    // those written now and those already there under their own names.
    let links = |from: &Path| -> Vec<(String, String)> {
        let base = lexical(&std::path::absolute(from.parent().unwrap_or(dir)).unwrap_or_default());
        let root = lexical(&std::path::absolute(dir).unwrap_or_default());
        let show = |at: &Path| {
            let at = lexical(&std::path::absolute(at).unwrap_or_default());
            match (at.strip_prefix(&root), base.strip_prefix(&root)) {
                (Ok(to), Ok(from)) => {
                    let up = from.components().count();
                    let mut rel: PathBuf = std::iter::repeat_n("..", up).collect();
                    rel.push(to);
                    rel.display().to_string()
                }
                _ => at.display().to_string(),
            }
        };
        let mut out: Vec<(String, String)> = Vec::new();
        let present = [Format::Junit, Format::Html, Format::Hlog]
            .into_iter()
            .filter(|f| !wanted.iter().any(|w| w.format == *f) && dir.join(f.default_name()).is_file())
            .map(|f| Wanted { format: f, path: None });
        for w in wanted.iter().filter(|w| w.format != Format::Markdown).cloned().chain(present).chain([JSON]) {
            let link = (w.format.label().to_string(), show(&target(dir, &w)));
            if !out.contains(&link) {
                out.push(link);
            }
        }
        out
    };
    wanted
        .iter()
        .map(|w| {
            let at = target(dir, w);
            let bytes =
                render(w.format, doc, &links(&at)).map_err(|e| format!("cannot render {}: {e}", at.display()))?;
            if let Some(parent) = at.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("cannot write {}: {e}", at.display()))?;
            }
            if let Ok(m) = std::fs::symlink_metadata(&at)
                && !m.is_file()
            {
                return Err(format!("cannot write {}: not a regular file; left alone", at.display()));
            }
            crate::deps::runfile::write_atomically(&at, &bytes)
                .map(|_| at.clone())
                .map_err(|e| format!("cannot write {}: {e}", at.display()))
        })
        .collect()
}

/// Writes the chosen formats when the verdict is known and again when the run is over.
pub struct FilesReporter {
    dir: PathBuf,
    wanted: Vec<Wanted>,
    secrets: Secrets,
    /// What the last write did, file by file.
    pub written: Vec<Result<PathBuf, String>>,
}

impl FilesReporter {
    pub fn new(dir: PathBuf, wanted: Vec<Wanted>, secrets: Secrets) -> FilesReporter {
        FilesReporter { dir, wanted, secrets, written: Vec::new() }
    }
}

impl Reporter for FilesReporter {
    fn event(&mut self, event: &Event) {
        let (Event::Finished(report) | Event::Judged(report, _)) = event else { return };
        if self.wanted.is_empty() {
            return;
        }
        let doc = match document(report, &self.secrets) {
            Ok(doc) => doc,
            Err(e) => {
                self.written = vec![Err(format!("cannot render the report: {e}"))];
                return;
            }
        };
        self.written = write_all(&doc, &self.dir, &self.wanted);
        if matches!(event, Event::Finished(_))
            && let Some(summary) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|s| !s.is_empty())
            && self.wanted.iter().any(|w| w.format == Format::Markdown)
        {
            let result = append_step_summary(Path::new(&summary), &doc);
            if let Err(e) = result {
                self.written.push(Err(format!(
                    "cannot append to GITHUB_STEP_SUMMARY ({}): {e}",
                    Path::new(&summary).display()
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_named_with_an_optional_path() {
        assert_eq!("junit".parse::<Wanted>().unwrap(), Wanted { format: Format::Junit, path: None });
        assert_eq!(
            "html=out/r.html".parse::<Wanted>().unwrap(),
            Wanted { format: Format::Html, path: Some("out/r.html".into()) }
        );
        assert!("xml".parse::<Wanted>().unwrap_err().contains("formats are json, junit, markdown, html, hlog"));
        assert!("junit=".parse::<Wanted>().is_err());
        let dir = Path::new("/r/run-1");
        assert_eq!(target(dir, &"markdown".parse().unwrap()), Path::new("/r/run-1/summary.md"));
        assert_eq!(target(dir, &"junit=/tmp/j.xml".parse().unwrap()), Path::new("/tmp/j.xml"));
    }
}
