//! The `stagegate` binary: parse the command line, call the library, exit with its code.

use clap::Parser;

// The driver allocates per request from every runtime thread at once; glibc's allocator
// spent a third of the sending CPU in its locks and arenas (perf, benches/compare.sh).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = stagegate::cli::Cli::parse();
    // stagegate says itself what goes wrong with a container; the container library's
    // own messages only show when asked for (`STAGEGATE_LOG=testcontainers=debug`).
    tracing_subscriber::fmt()
        .with_writer(stagegate::secrets::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STAGEGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,testcontainers=off,bollard=off")),
        )
        .init();
    std::process::exit(stagegate::cli::execute(cli));
}
