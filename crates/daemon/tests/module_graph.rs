//! The daemon's modules import each other without cycles, and every crate's `lib.rs` lists
//! its modules.
//!
//! A cycle (`a` uses `crate::b`, `b` uses `crate::a`) means neither can be read, tested or
//! changed alone: the daemon-core restructuring removed them, and this test keeps them out.
//! It reads every module file under `src/` (test files, `*_tests.rs`, and everything after a
//! file's first `#[cfg(test)]` are not part of the graph: tests may look anywhere), takes
//! each `crate::<module>` path outside comments as an edge, and fails naming the cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name → the crate modules its code names.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(src) else {
        panic!("cannot list {}", src.display());
    };
    let files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    for path in &files {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with("_tests") || name == "main" || name == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut edges = BTreeSet::new();
        for line in text.lines() {
            let code = line.trim_start();
            if code.starts_with("#[cfg(test)]") {
                break;
            }
            if code.starts_with("//") {
                continue;
            }
            let code = code.split("//").next().unwrap_or("");
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                let target: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if target != name && modules.contains(&target) {
                    edges.insert(target);
                }
            }
            // `use crate::{a, b::C}` names several modules at once.
            if let Some(group) = code.strip_prefix("use crate::{") {
                for part in group.split(',') {
                    let target: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if target != name && modules.contains(&target) {
                        edges.insert(target);
                    }
                }
            }
        }
        graph.insert(name, edges);
    }
    graph
}

/// A cycle in `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_daemons_modules_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(graph.len() > 10, "read too few modules: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "module cycle: {}; move what both need into a module neither imports, or pass it in",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle_and_accepts_a_tree() {
    let g = |edges: &[(&str, &str)]| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            m.entry(a.to_string()).or_default().insert(b.to_string());
            m.entry(b.to_string()).or_default();
        }
        m
    };
    assert_eq!(find_cycle(&g(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    let c = find_cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")]));
    assert_eq!(c.map(|c| c.len()), Some(4), "a -> b -> c -> a");
}

/// The modules `lib_rs` declares that its `//!` doc does not name (test modules aside).
fn unlisted_modules(lib_rs: &str) -> Vec<String> {
    let doc: String = lib_rs
        .lines()
        .filter(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    lib_rs
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix("pub(crate) ")
                .or_else(|| l.strip_prefix("pub "))
                .unwrap_or(l);
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .filter(|m| m != "tests" && !m.ends_with("_tests"))
        .filter(|m| !doc.contains(&format!("`{m}`")))
        .collect()
}

#[test]
fn every_crates_lib_rs_lists_every_module_in_its_map() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut libs: Vec<_> = std::fs::read_dir(root.join("crates"))
        .map(|rd| rd.flatten().map(|e| e.path().join("src/lib.rs")).collect())
        .unwrap_or_default();
    libs.push(root.join("guest-agent/src/lib.rs"));
    let mut missing = Vec::new();
    let mut read = 0;
    for lib in libs.iter().filter(|p| p.is_file()) {
        let text = std::fs::read_to_string(lib).unwrap_or_default();
        read += 1;
        for m in unlisted_modules(&text) {
            missing.push(format!("{}: {m}", lib.display()));
        }
    }
    assert!(read > 10, "read too few crates under {}", root.display());
    assert!(
        missing.is_empty(),
        "modules missing from their crate's module map (add a `//! - [`name`]: …` line): {missing:?}"
    );
}

#[test]
fn the_map_check_sees_a_missing_module() {
    let lib = "//! Modules: [`a`].\npub mod a;\nmod b;\n#[cfg(test)]\nmod tests;\n";
    assert_eq!(unlisted_modules(lib), vec!["b".to_string()]);
}

/// Test files under `src/` that break the one convention: the unit tests of module `x` are
/// `mod tests` of `x`, inline or, when long, in `src/x_tests.rs` declared at the end of `x.rs`
/// as `#[cfg(test)] #[path = "x_tests.rs"] mod tests;`. Tests across modules or binaries
/// are integration tests in the crate's `tests/`.
fn misplaced_test_files(src: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(src) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for path in rd.flatten().map(|e| e.path()) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(module) = name.strip_suffix("_tests.rs") else {
            continue;
        };
        let owner = src.join(format!("{module}.rs"));
        let text = std::fs::read_to_string(&owner).unwrap_or_default();
        let path_attr = format!("#[path = \"{name}\"]\n");
        let declared = text.contains(&format!("{path_attr}mod tests;"))
            || text.contains(&format!("{path_attr}pub(crate) mod tests;"));
        if !declared {
            out.push(format!(
                "{}: declare it at the end of {} as #[cfg(test)] #[path = \"{name}\"] mod tests;",
                path.display(),
                owner.display()
            ));
        }
    }
    out
}

#[test]
fn unit_test_files_sit_beside_the_module_they_test_as_its_mod_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut dirs: Vec<_> = std::fs::read_dir(root.join("crates"))
        .map(|rd| rd.flatten().map(|e| e.path().join("src")).collect())
        .unwrap_or_default();
    dirs.push(root.join("guest-agent/src"));
    let bad: Vec<String> = dirs.iter().flat_map(|d| misplaced_test_files(d)).collect();
    assert!(bad.is_empty(), "test files off the convention: {bad:#?}");
}
