use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    few_arenas();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// At most two malloc arenas, before any thread starts: glibc gives each
/// thread that meets contention an arena of its own (up to eight per core),
/// and memory freed in one is not returned to the others; the blocking
/// pool's threads then kept tens of MiB each in use by the process. Two
/// arenas cost no measurable time here (the work is in large buffers).
fn few_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; it is called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

async fn run() -> ExitCode {
    bascule_core::child::private_umask(0o027);
    let cli = bascule_agent::cli::Cli::parse();
    bascule_core::logging::init(cli.log_format);
    match bascule_agent::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", bascule_core::logging::one_line(e.chain()));
            ExitCode::FAILURE
        }
    }
}
