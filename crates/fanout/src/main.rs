//! The `fanout` binary: parse flags, set up logging, run the app, and turn
//! its outcome into an exit code (see `fanout --help`).

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use fanout::config::{Cli, Command, Config, LogFormat};

fn main() -> ExitCode {
    // Bad flags exit 2 here, with clap's message naming the flag.
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        print!("{}", fanout::crd_yaml());
        return ExitCode::SUCCESS;
    }
    init_logging(&cli.config);
    match run(cli.config) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "fanout failed");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let exit = runtime.block_on(fanout::app::run(config))?;
    // Tasks still parked on the API server must not delay the exit.
    runtime.shutdown_background();
    Ok(ExitCode::from(exit.code()))
}

fn init_logging(config: &Config) {
    // The filter was validated when the flags were parsed.
    let filter = tracing_subscriber::EnvFilter::new(&config.log_filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}
