//! The logging flags of both command lines, and where logs go (stderr).

use clap::Args;

/// Logging flags shared by both binaries.
#[derive(Args)]
pub struct LogArgs {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info", env = "BURROW_LOG_LEVEL")]
    log_level: String,
}

impl LogArgs {
    /// Log to stderr; `RUST_LOG` wins over the flag.
    pub fn init(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&self.log_level));
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .try_init();
    }
}
