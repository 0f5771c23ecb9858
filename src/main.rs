//! The `slirpnet` binary: parse, report, run. Everything else lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use slirpnet::cli::{self, Invocation};

fn main() -> ExitCode {
    let invocation = match cli::parse(std::env::args_os()) {
        Ok(invocation) => invocation,
        Err(error) => {
            eprintln!("{error}");
            if error.show_usage {
                print!("{}", cli::usage());
            }
            return ExitCode::from(1);
        }
    };
    let config = match invocation {
        Invocation::Help => {
            print!("{}", cli::usage());
            return ExitCode::SUCCESS;
        }
        Invocation::Version => {
            print!("{}", cli::version_text());
            return ExitCode::SUCCESS;
        }
        Invocation::Run(config) => config,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Engines keep our stderr in log files: colour codes only on a terminal.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    match slirpnet::run::run(&config) {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(error) => {
            eprintln!("slirpnet: {error:#}");
            ExitCode::from(1)
        }
    }
}
