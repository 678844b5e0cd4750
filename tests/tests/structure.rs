//! The shape of the source tree, kept: no source file over 500 lines (its
//! unit tests left out), and no two files of one crate that import each
//! other, but for a folder's `mod.rs` and the files of that folder (which
//! share what the folder defines). Functions over 120 lines are refused by
//! clippy (`clippy.toml`). And the README's threat model and security
//! sections cite tests that exist.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: &[&str] = &["core/src", "agent/src", "controller/src"];
const MAX_LINES: usize = 500;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without its `#[cfg(test)]` part and comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// The module path of a file (`drill/report/mod.rs` → `drill::report`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The file of the longest prefix of `path` that is a module.
fn file_of(src: &Path, path: &[String]) -> Option<PathBuf> {
    (1..=path.len()).rev().find_map(|n| {
        let base = path[..n].iter().fold(src.to_path_buf(), |p, s| p.join(s));
        [base.with_extension("rs"), base.join("mod.rs")].into_iter().find(|c| c.is_file())
    })
}

/// Paths named in `text` after `crate::` or `super::` (resolved from module
/// `here`), and after a module alias brought in by `use`.
fn named_paths(text: &str, here: &[String]) -> Vec<Vec<String>> {
    let idents = |s: &str| -> Vec<String> { s.split("::").map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect() };
    let resolve = |head: &str, rest: Vec<String>| -> Vec<String> {
        if head == "crate" {
            return rest;
        }
        let mut up = 1;
        let mut rest = rest;
        while rest.first().map(String::as_str) == Some("super") {
            up += 1;
            rest.remove(0);
        }
        let mut base = here[..here.len().saturating_sub(up)].to_vec();
        base.extend(rest);
        base
    };
    let mut out = Vec::new();
    let s = text;
    for head in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = s[from..].find(head) {
            let at = from + i;
            from = at + head.len();
            if at > 0 && s[..at].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let tail: String = s[from..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            let mut parts = idents(&tail);
            // `use crate::a::{b, c::d}`: one level of braces
            let after = &s[from + tail.len()..];
            if tail.ends_with("::") && after.starts_with('{') {
                if let Some(end) = after.find('}') {
                    for item in after[1..end].split(',') {
                        let item: String =
                            item.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':' || *c == ' ').collect();
                        let mut p = parts.clone();
                        p.extend(idents(item.split(" as ").next().unwrap_or_default()));
                        out.push(resolve(&head[..head.len() - 2], p));
                    }
                }
                continue;
            }
            if parts.is_empty() {
                continue;
            }
            out.push(resolve(&head[..head.len() - 2], std::mem::take(&mut parts)));
        }
    }
    out
}

#[test]
fn no_source_file_is_over_500_lines() {
    let root = root();
    let mut long = Vec::new();
    for c in CRATES {
        let mut files = Vec::new();
        sources(&root.join(c), &mut files);
        for f in files {
            let n = code(&f).lines().count();
            if n > MAX_LINES {
                long.push(format!("{} ({n} lines)", f.strip_prefix(&root).unwrap().display()));
            }
        }
    }
    assert!(long.is_empty(), "split these files by noun: {long:?}");
}

#[test]
fn no_two_files_import_each_other() {
    let root = root();
    let mut pairs = BTreeSet::new();
    for c in CRATES {
        let src = root.join(c);
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut deps: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
        for f in &files {
            let here = module_of(&src, f);
            let text = code(f);
            let mut mine = BTreeSet::new();
            let paths = named_paths(&text, &here);
            // aliases: `use crate::a::b;` makes `b::x` name `a::b::x`
            let aliases: BTreeMap<String, Vec<String>> = paths
                .iter()
                .filter(|p| {
                    file_of(&src, p)
                        .is_some_and(|f| f == src.join(p.join("/")).with_extension("rs") || f == src.join(p.join("/")).join("mod.rs"))
                })
                .filter_map(|p| Some((p.last()?.clone(), p.clone())))
                .collect();
            for p in &paths {
                mine.extend(file_of(&src, p));
            }
            for (alias, full) in &aliases {
                let pat = format!("{alias}::");
                for (i, _) in text.match_indices(&pat) {
                    if text[..i].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                        continue;
                    }
                    let tail: String =
                        text[i + pat.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
                    let mut p = full.clone();
                    p.extend(tail.split("::").filter(|s| !s.is_empty()).map(str::to_string));
                    mine.extend(file_of(&src, &p));
                }
            }
            mine.remove(f);
            deps.insert(f.clone(), mine);
        }
        for (a, ds) in &deps {
            for b in ds {
                let parent_and_child = |x: &Path, y: &Path| x.ends_with("mod.rs") && y.starts_with(x.parent().unwrap());
                if deps.get(b).is_some_and(|d| d.contains(a)) && !parent_and_child(a, b) && !parent_and_child(b, a) {
                    let (a, b) =
                        (a.strip_prefix(&root).unwrap().display().to_string(), b.strip_prefix(&root).unwrap().display().to_string());
                    pairs.insert(if a < b { (a, b) } else { (b, a) });
                }
            }
        }
    }
    assert!(pairs.is_empty(), "these files import each other: {pairs:?}");
}

#[test]
fn the_checks_see_a_cycle_and_a_long_file() {
    // the checks themselves, on a made-up crate: a cycle is found, a parent and its child are allowed
    let here = vec!["drill".to_string(), "engine".to_string()];
    let found =
        named_paths("use super::step;\nuse crate::drill::{report, store::Store};\nlet x = super::super::model::Mode::Drill;", &here);
    assert!(found.contains(&vec!["drill".to_string(), "step".to_string()]), "{found:?}");
    assert!(found.contains(&vec!["drill".to_string(), "store".to_string(), "Store".to_string()]), "{found:?}");
    assert!(found.contains(&vec!["model".to_string(), "Mode".to_string(), "Drill".to_string()]), "{found:?}");
    assert!(code(&root().join("controller/src/lib.rs")).lines().count() < MAX_LINES);
}

#[test]
fn the_threat_model_and_security_sections_name_tests_that_exist() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut named = 0;
    let sections = ["## Threat model", "## Security"]
        .map(|h| readme.split(h).nth(1).unwrap_or_else(|| panic!("a {h} section")).split("\n## ").next().unwrap().to_string());
    let cited_all: Vec<&str> = sections.iter().flat_map(|s| s.split('`').skip(1).step_by(2)).collect();
    for cited in cited_all {
        let Some((file, test)) = cited.split_once("::") else { continue };
        if file.is_empty() || !file.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue;
        }
        let path = root().join("tests/tests").join(format!("{file}.rs"));
        let source = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("the threat model cites {cited}: no {}", path.display()));
        assert!(
            test == "*" || source.contains(&format!("fn {test}()")),
            "the threat model cites {cited}: no such test in {}",
            path.display()
        );
        named += 1;
    }
    assert!(named >= 22, "the threat model and the security section name {named} tests");
}
