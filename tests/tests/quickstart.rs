//! The README's first command, end to end, as a new user runs it.
use std::process::Command;

use bascule_tests::{bin, run, text};

#[test]
fn the_readme_quickstart_runs_end_to_end() {
    for tool in ["age", "zstd"] {
        assert!(
            bascule_tests::which(tool, &[]).is_some(),
            "the `{tool}` CLI is needed for the quickstart's escape hatch: apt-get install {tool} (the README's test command does)"
        );
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let bin_dir = bin("bascule-agent").parent().expect("target dir").to_path_buf();
    let out = run(Command::new("bash").arg(root.join("scripts/quickstart.sh")).env("BASCULE_BIN_DIR", &bin_dir));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for line in [
        "drill 1 (quickstart, drill mode): PASS",
        "against the 4:00:00 target: met",
        "provider-a:yes provider-b:yes",
        "data-only dumps of source and restored databases are identical",
        "bytes of pg_dump stream, starting with: PGDMP",
        "all is well.",
        "quickstart: OK",
    ] {
        assert!(t.contains(line), "quickstart output lacks {line:?}:\n{t}");
    }
}
