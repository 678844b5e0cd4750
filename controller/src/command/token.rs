//! `token`: a new API token, shown once, and the configuration line that
//! holds only its hash.
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Who holds it, as the audit log will name it.
    #[arg(long)]
    name: String,
    #[arg(long, value_enum)]
    role: RoleArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Viewer,
    Operator,
}

pub fn main(a: Args) -> anyhow::Result<ExitCode> {
    let Args { name, role } = a;
    bascule_core::config::check_name("token name", &name)?;
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).context("the operating system's random source")?;
    let token = format!("bsc_{}", hex::encode(secret));
    let role = match role {
        RoleArg::Viewer => "viewer",
        RoleArg::Operator => "operator",
    };
    eprintln!("token (shown once; give it to {name}):");
    println!("{token}");
    eprintln!("add under serve.tokens in the controller's configuration:");
    eprintln!("  - {{ name: {name}, role: {role}, hash: \"blake3:{}\" }}", blake3::hash(token.as_bytes()).to_hex());
    Ok(ExitCode::SUCCESS)
}
