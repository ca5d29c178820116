//! vxdp: a userspace VXLAN dataplane, a drop-in replacement for flannel's vxlan backend.

mod cleanup;
mod cli;
mod control_socket;
mod daemon;
mod health;
mod metrics;
mod status;
mod systemd;
mod takeover;

use tracing_subscriber::EnvFilter;

use crate::cli::{Command, LogFormat};

fn init_logging(format: LogFormat, verbosity: Option<u8>) {
    // RUST_LOG wins; else flanneld's -v maps onto levels.
    let default = match verbosity.unwrap_or(0) {
        0..=3 => "info",
        4..=5 => "debug",
        _ => "trace",
    };
    // kube-rs logs every failed connection attempt at error level; the Kubernetes store reports
    // each failure itself, with what it retries and when, so the default leaves kube-rs out.
    let default = format!("{default},kube_client=off");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = cli::parse(std::env::args_os().collect()).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Some(Command::Status(args)) => status::print(&args, status::View::Status),
        Some(Command::Peers(args)) => status::print(&args, status::View::Peers),
        Some(Command::Leases(args)) => status::print(&args, status::View::Leases),
        Some(Command::Run(args)) => run(*args, daemon::Mode::Run),
        Some(Command::Cleanup(args)) => run(*args, daemon::Mode::Cleanup),
        None => run(cli.run, daemon::Mode::Run),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vxdp: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: cli::RunArgs, mode: daemon::Mode) -> anyhow::Result<()> {
    args.unsupported.check().map_err(anyhow::Error::msg)?;
    init_logging(args.log_format, args.verbosity);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("vxdp-control")
        .build()?;
    let result = runtime.block_on(daemon::run(args, mode));
    if let Err(e) = &result {
        tracing::error!("{e:#}");
    }
    result
}
