//! Subcommands of the `ecr` tool, one module each.

pub mod bench;
pub mod chat;
pub mod compare;
pub mod data;
pub mod demo;
pub mod recipe;
pub mod train;

/// Log to stderr; `RUST_LOG` picks what (default: warnings, and info for ecr's own crates).
pub fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,ecr=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
