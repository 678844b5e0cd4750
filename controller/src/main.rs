use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    bascule_core::child::start(run())
}

async fn run() -> ExitCode {
    bascule_core::child::private_umask(0o077);
    let cli = bascule_controller::cli::Cli::parse();
    bascule_core::logging::init(cli.log_format);
    match bascule_controller::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", bascule_core::logging::one_line(e.chain()));
            ExitCode::FAILURE
        }
    }
}
