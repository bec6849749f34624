//! Every bound stagegate puts on what comes from outside it, in one place: files it
//! reads, answers and pushes from the system under test, rates and durations a scenario
//! may ask for, and how long an orderly stop may take before it is forced.
//!
//! Each bound is generous for honest use and stops a runaway input (a `/dev/zero`
//! scenario, a 100 MB read-back answer, a sink flooded with records) long before memory
//! or time runs out. [`read_bounded`] is the one way files from the user are read.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// A scenario file.
pub const SCENARIO_BYTES: u64 = 4 * 1024 * 1024;
/// A record schema (`synthetic-data/*.yaml`).
pub const SCHEMA_BYTES: u64 = 1024 * 1024;
/// A playbook file.
pub const PLAYBOOK_BYTES: u64 = 1024 * 1024;
/// A `run.json`, read by `cleanup`.
pub const RUN_RECORD_BYTES: u64 = 1024 * 1024;
/// A saved report.json (`stagegate report`, `stagegate compare`). A run's own is a few
/// MiB at most (600 points a stage); parsed, a document takes some 10 to 25 times its
/// size, so this keeps a hostile one to a few hundred MiB.
pub const REPORT_BYTES: u64 = 16 * 1024 * 1024;
/// A `stagegate proxy --config` file.
pub const PROXY_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// One read-back answer (one record, or its copies).
pub const READ_BACK_BYTES: usize = 1024 * 1024;
/// Read-backs in flight at once.
pub const READ_BACK_PARALLEL: usize = 32;
/// One page of a scan.
pub const SCAN_PAGE_BYTES: usize = 16 * 1024 * 1024;
/// Pages of one listing.
pub const SCAN_PAGES: usize = 10_000;
/// One body pushed to the sink.
pub const SINK_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Bodies the sink reads at once; other pushes wait their turn.
pub const SINK_READERS: usize = 8;
/// How long one pushed body may take to arrive once its turn came.
pub const SINK_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// One body sent to an endpoint stagegate serves for control (OFREP, the proxy API).
pub const CONTROL_BODY_BYTES: usize = 1024 * 1024;

/// The highest arrival rate a scenario may ask for, per second. (The driver sustains a
/// few tens of thousands here; past this the schedule itself stops making sense.)
pub const MAX_RATE: f64 = 1_000_000.0;
/// The longest duration any scenario value may have.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);
/// The most requests one stage may send: the ledger keeps about 500 bytes for each
/// (measured), so this is about 5 GB. An open model that plans more is refused; a closed
/// model, whose count depends on the target's speed, stops sending here.
pub const MAX_REQUESTS_PER_STAGE: f64 = 10_000_000.0;

/// The longest a single request may be waited for (`workload.timeout`, `http.timeout`).
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// The most records an `out_of_order` fault holds back (they are generated ahead).
pub const MAX_REORDER_WINDOW: u32 = 10_000;

/// How long a server stagegate runs (OFREP, sink, a proxy) may take to finish the
/// requests it is serving once asked to stop; then it is stopped outright.
pub const SERVER_STOP: Duration = Duration::from_secs(2);
/// How long a process gets between SIGTERM and SIGKILL.
pub const PROCESS_GRACE: Duration = Duration::from_secs(5);
/// How long removing a container may take.
pub const CONTAINER_STOP: Duration = Duration::from_secs(15);

/// How long reading a file given by the user may take.
pub const READ_WAIT: Duration = Duration::from_secs(30);
/// How long reading a named pipe may take (one no one writes to would wait forever).
pub const PIPE_WAIT: Duration = Duration::from_secs(5);

/// Reads the text file at `path`, refusing more than `limit` bytes (a device such as
/// `/dev/zero` ends here, not in memory exhaustion). Pipes and other non-regular files
/// are read too, within the same limit.
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::os::unix::fs::FileTypeExt;
    let pipe = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
    let mut text = read_bounded_within(path, limit, if pipe { PIPE_WAIT } else { READ_WAIT })?;
    // A byte-order mark some editors write is not part of the text.
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

fn read_bounded_within(path: &Path, limit: u64, wait: Duration) -> std::io::Result<String> {
    // Opening and reading a pipe no one writes to would wait forever: it is done on a
    // thread of its own, given [`READ_WAIT`].
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    std::thread::spawn(move || {
        let read = std::fs::File::open(&owned).and_then(|file| {
            let mut bytes = Vec::new();
            file.take(limit + 1).read_to_end(&mut bytes).map(|_| bytes)
        });
        let _ = tx.send(read);
    });
    let bytes = rx.recv_timeout(wait).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("it could not be read within {}s (a pipe no one writes to?)", wait.as_secs()),
        )
    })??;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it is larger than {}", human_bytes(limit)),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("it is not UTF-8 text ({e})")))
}

/// `4 MiB`, `512 KiB`, `100 B`.
pub fn human_bytes(n: u64) -> String {
    if n >= 1024 * 1024 && n.is_multiple_of(1024 * 1024) {
        format!("{} MiB", n / (1024 * 1024))
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

/// How long the run waits for the report to be written before the `on_verdict`
/// action, which may read it, is started anyway.
pub const REPORT_WRITE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_file_is_refused_at_the_limit() {
        let err = read_bounded(Path::new("/dev/zero"), 1024).unwrap_err();
        assert_eq!(err.to_string(), "it is larger than 1 KiB");
    }

    #[test]
    fn a_small_file_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.yaml");
        std::fs::write(&path, "version: 1\n").unwrap();
        assert_eq!(read_bounded(&path, 11).unwrap(), "version: 1\n");
        assert!(read_bounded(&path, 10).is_err());
    }

    #[test]
    fn a_pipe_no_one_writes_to_is_given_up_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("scenario.yaml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = read_bounded_within(&fifo, 1024, Duration::from_millis(200)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    }
}
