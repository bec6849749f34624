//! The `stagegate` binary: parse the command line, call the library, exit with its code.

use clap::Parser;

fn main() {
    let cli = stagegate::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(stagegate::secrets::LogWriter)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STAGEGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    std::process::exit(stagegate::cli::execute(cli));
}
