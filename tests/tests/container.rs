//! The container image of deploy/container/Containerfile, built with podman
//! and run as the Kubernetes pod runs it (read-only root filesystem, every
//! capability dropped, no privilege escalation, its own non-root user):
//! `bascule-controller --version`, the PostgreSQL client programs a restore
//! needs, and `verify-key` on a configuration mounted read-only, its state on
//! a tmpfs.
//!
//! No container registry is reachable here, so the base image is made from
//! Debian's packages: `debootstrap --variant=minbase trixie` (about 30 s, the
//! first time only: its root filesystem is kept as a tarball under
//! /var/cache/bascule-test, and imported once into podman's storage as
//! localhost/bascule-test/debian:trixie-slim), and the image is built from the
//! binary the test suite built (`--target prebuilt`) rather than by cargo in
//! a Rust image. Podman keeps the layers: after the first run, a build only
//! copies the binary.
//!
//! podman runs with runc: crun refuses a machine whose cgroup v2 hierarchy
//! holds a controller (here hugetlb) beside the v1 ones ("cgroups in hybrid
//! mode not supported, drop all controllers from cgroupv2"); and with ulimits
//! below the machine's, since its defaults raise them past what a process
//! without CAP_SYS_RESOURCE may ("setrlimit `RLIMIT_NOFILE`: Operation not
//! permitted").
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bascule_tests::{bin, ok, run, text, which, write};

const CACHE: &str = "/var/cache/bascule-test";
const BASE: &str = "localhost/bascule-test/debian:trixie-slim";
const IMAGE: &str = "localhost/bascule-controller:test";
const LIMITS: [&str; 4] = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"];
fn need(tool: &str, package: &str) -> PathBuf {
    which(tool, &[PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .unwrap_or_else(|| panic!("{tool} is missing: install it with `apt-get install {package}` (./scripts/test.sh does)"))
}

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc"]);
    c
}

/// The Debian base image, made by debootstrap the first time.
fn base_image() {
    if run(podman().args(["image", "exists", BASE])).status.success() {
        return;
    }
    let tar = Path::new(CACHE).join("debian-trixie-minbase.tar");
    if !tar.exists() {
        let t0 = Instant::now();
        std::fs::create_dir_all(CACHE).unwrap();
        let work = tempfile::tempdir_in(CACHE).unwrap();
        let rootfs = work.path().join("rootfs");
        // from Debian's default mirror, which the image's apt then uses too
        ok(Command::new(need("debootstrap", "debootstrap")).args(["--variant=minbase", "trixie"]).arg(&rootfs));
        for d in ["var/cache/apt/archives", "var/lib/apt/lists"] {
            ok(Command::new("find").arg(rootfs.join(d)).args(["-type", "f", "-delete"]));
        }
        let partial = work.path().join("rootfs.tar");
        ok(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&partial).arg("."));
        std::fs::rename(&partial, &tar).unwrap();
        eprintln!("debootstrap of the base image: {:.1}s (kept in {})", t0.elapsed().as_secs_f64(), tar.display());
    }
    ok(podman().args(["import", "--change", "CMD [\"bash\"]"]).arg(&tar).arg(BASE));
}

/// Removes the image (its cached layers stay, for the next build).
struct Remove;
impl Drop for Remove {
    fn drop(&mut self) {
        let _ = podman().args(["rmi", "--no-prune", IMAGE]).output();
    }
}

/// `podman run` of the image, confined as the pod's container is.
fn in_image(args: &[&str]) -> std::process::Output {
    run(podman()
        .args(["run", "--rm", "--network=none", "--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges"])
        .args(LIMITS)
        .args(args))
}

#[test]
fn the_image_builds_with_podman_and_runs_the_controller_as_its_own_user() {
    assert!(bascule_tests::is_root(), "podman builds and runs the image as root here (CI runs as root)");
    need("podman", "podman");
    need("runc", "runc");
    let t0 = Instant::now();
    base_image();
    let t_base = t0.elapsed();

    // the build context: the test suite's binary, without its debug sections
    let ctx = tempfile::tempdir().unwrap();
    let binary = ctx.path().join("bascule-controller");
    if which("strip", &[]).is_some() {
        ok(Command::new("strip").arg("--strip-debug").arg("-o").arg(&binary).arg(bin("bascule-controller")));
    } else {
        std::fs::copy(bin("bascule-controller"), &binary).unwrap();
    }
    let containerfile = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy/container/Containerfile");
    let _remove = Remove;
    let t1 = Instant::now();
    ok(podman()
        .args(["build", "--network=host", "--pull=never", "--target", "prebuilt"])
        .args(LIMITS)
        .arg("--build-arg")
        .arg(format!("BASE_IMAGE={BASE}"))
        .arg("-f")
        .arg(&containerfile)
        .args(["-t", IMAGE])
        .arg(ctx.path()));
    let t_build = t1.elapsed();

    let v = in_image(&[IMAGE, "--version"]);
    assert!(v.status.success(), "bascule-controller --version in the image:\n{}", text(&v));
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), format!("bascule-controller {}", env!("CARGO_PKG_VERSION")));

    let user = ok(podman().args(["image", "inspect", "--format", "{{.Config.User}}", IMAGE]));
    assert_eq!(user.trim(), "10001:10001", "a numeric user, so that the kubelet can check runAsNonRoot");
    let id = in_image(&["--entrypoint", "id", IMAGE]);
    assert_eq!(text(&id).trim(), "uid=10001(bascule) gid=10001(bascule) groups=10001(bascule)");
    // what a restore runs, and the init container's copy of the report key
    for tool in ["pg_restore", "pg_dump", "psql", "pg_basebackup"] {
        let o = in_image(&["--entrypoint", tool, IMAGE, "--version"]);
        assert!(o.status.success() && text(&o).contains("(PostgreSQL) 17"), "{tool} --version:\n{}", text(&o));
    }
    let o = in_image(&["--entrypoint", "install", IMAGE, "--version"]);
    assert!(o.status.success(), "install (the init container's command):\n{}", text(&o));
    let paris = in_image(&["--entrypoint", "test", IMAGE, "-f", "/usr/share/zoneinfo/Europe/Paris"]);
    assert!(paris.status.success(), "tzdata: schedules are in local time (TZ)");

    // the controller itself, on a read-only root: its configuration mounted
    // read-only, its state on a tmpfs of its user
    let cfg = tempfile::tempdir().unwrap();
    write(
        &cfg.path().join("controller.yaml"),
        "state_dir: /var/lib/bascule\nproviders:\n  - { name: a, url: \"file:///var/lib/bascule/a\" }\n  - { name: b, url: \"file:///var/lib/bascule/b\" }\ntenants: []\n",
    );
    ok(Command::new("chmod").arg("-R").arg("a+rX").arg(cfg.path()));
    let o = in_image(&[
        "-v",
        &format!("{}:/etc/bascule/config:ro", cfg.path().display()),
        "--mount",
        "type=tmpfs,destination=/var/lib/bascule,chown=true",
        IMAGE,
        "verify-key",
        "--config",
        "/etc/bascule/config/controller.yaml",
    ]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("ed25519:"), "verify-key in the image:\n{}", text(&o));
    eprintln!(
        "base image {:.1}s, build {:.1}s, runs {:.1}s",
        t_base.as_secs_f64(),
        t_build.as_secs_f64(),
        (t0.elapsed() - t_base - t_build).as_secs_f64()
    );
}
