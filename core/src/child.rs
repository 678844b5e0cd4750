//! Child processes start clean: an empty environment plus an allow-list
//! (where programs are, the locale, the time zone, the home folder), never
//! the parent's whole environment, which may hold a provider's secret key
//! given as `{env: …}`. What a child needs beyond that is given to it, by
//! name.

/// Files and folders this process creates are not for other users: `mask`
/// (0o077 for the controller; 0o027 for the agent, whose spool PostgreSQL's
/// group may share) is taken away from every mode asked for.
pub fn private_umask(mask: u32) {
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(mask));
}

/// Runs a program's `main`: the allocator set up first, then `run` on a
/// multi-threaded runtime.
pub fn start(run: impl std::future::Future<Output = std::process::ExitCode>) -> std::process::ExitCode {
    steady_allocator();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(run),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The allocator set for a long stream, before any thread starts:
/// * at most two malloc arenas: glibc gives each thread that meets
///   contention an arena of its own (up to eight per core), and memory freed
///   in one is not returned to the others, so that the blocking pool's
///   threads kept tens of MiB each in use by the process (an agent's export
///   of 2 GB peaked at 204–223 MiB, 88–91 MiB with two);
/// * blocks of 4 MiB and more (packs being filled and uploaded) mapped on
///   their own, and unmapped when freed: by default the threshold rises to
///   the largest block freed, the packs then come from the heap, and the
///   1 MiB batches and segments between them leave holes that are never
///   given back (an export of 2 GiB peaked at 60–64 MiB, 51 MiB with the
///   threshold fixed; of 20 GiB, 107 then 95 MiB).
#[allow(unsafe_code)]
fn steady_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets parameters of the allocator; it runs before
    // the runtime starts any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// The variables a child keeps from its parent.
pub const KEPT: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ", "TMPDIR"];

/// The allow-listed variables of this process, with their values.
pub fn kept() -> Vec<(&'static str, std::ffi::OsString)> {
    KEPT.iter().filter_map(|k| std::env::var_os(k).map(|v| (*k, v))).collect()
}

/// Clears `cmd`'s environment but for [`KEPT`].
pub fn clean(cmd: &mut tokio::process::Command) -> &mut tokio::process::Command {
    cmd.env_clear().envs(kept())
}

/// [`clean`] for a `std` command.
pub fn clean_std(cmd: &mut std::process::Command) -> &mut std::process::Command {
    cmd.env_clear().envs(kept())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_child_sees_only_what_it_is_given() {
        // cargo and nextest give a test process its package's name
        let name = std::env::var("CARGO_PKG_NAME").expect("CARGO_PKG_NAME in the test's environment");
        let mut c = tokio::process::Command::new("env");
        super::clean(&mut c).env("GIVEN", "1");
        let out = String::from_utf8(c.output().await.unwrap().stdout).unwrap();
        assert!(!out.contains("CARGO_PKG_NAME") && !out.contains(&name), "{out}");
        assert!(out.contains("GIVEN=1") && out.contains("PATH="), "{out}");
    }
}
