//! vxdp: a userspace VXLAN dataplane, a drop-in replacement for flannel's vxlan backend.

mod cli;
mod control_socket;
mod daemon;
mod status;
mod xdp_backend;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, LogFormat};

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Status(args)) => status::print(&args),
        Some(Command::Run(args)) => run(args),
        None => run(cli.run),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vxdp: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: cli::RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("vxdp-control")
        .build()?;
    let result = runtime.block_on(daemon::run(args));
    if let Err(e) = &result {
        tracing::error!("{e:#}");
    }
    result
}
