//! The module graph runs one way: reads `src/**/*.rs`, collects the `crate::<module>` paths
//! each top-level module names outside comments and string literals (tests included), and
//! fails on a cycle between top-level modules or on a forbidden edge.
//!
//! `cargo test --test module_graph -- --nocapture` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Edges that must never appear: (from, to). `*` means every other module.
const FORBIDDEN: &[(&str, &str)] = &[
    ("hub", "edge"),
    ("hub", "session"),
    ("link", "hub"),
    ("link", "session"),
    ("link", "edge"),
    ("session", "edge"),
    ("edge", "admin"),
    ("metrics", "*"),
    ("server", "*"),
];

/// Modules `protocol` may name (the generated code, under its two names).
const PROTOCOL_MAY_USE: &[&str] = &["pb"];

/// Edges still present on this branch and waiting for another change, excluded from the cycle
/// check; each must still exist (remove it from here once its change lands). `file` is the only
/// file allowed to carry it.
const PENDING: &[(&str, &str, &str, &str)] = &[];

/// A module's source, without comments and string or char literals (replaced by spaces).
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    while i < bytes.len() {
        let rest = &bytes[i..];
        let prev_ident = i > 0 && ident(bytes[i - 1]);
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            i += end;
        } else if rest.starts_with(b"/*") {
            let mut depth = 0usize;
            let mut j = 0;
            while j < rest.len() {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            i += j;
            out.push(' ');
        } else if !prev_ident
            && (rest.starts_with(b"r#") || rest.starts_with(b"r\"") || rest.starts_with(b"br"))
            && raw_string_len(rest).is_some()
        {
            i += raw_string_len(rest).unwrap_or(1);
            out.push(' ');
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            i += j + 1;
            out.push(' ');
        } else if rest[0] == b'\'' && rest.len() > 2 && (rest[1] == b'\\' || rest[2] == b'\'') {
            // A char literal ('"', '\'', '\n'); a lifetime has no closing quote this close.
            let end = rest[2..]
                .iter()
                .position(|&b| b == b'\'')
                .map_or(1, |p| p + 3);
            i += end;
            out.push(' ');
        } else {
            out.push(rest[0] as char);
            i += 1;
        }
    }
    out
}

/// Length of the raw string literal `rest` starts with (`r"…"`, `r#"…"#`, `br#"…"#`).
fn raw_string_len(rest: &[u8]) -> Option<usize> {
    let start = if rest.starts_with(b"br") { 2 } else { 1 };
    let hashes = rest[start..].iter().take_while(|&&b| b == b'#').count();
    if rest.get(start + hashes) != Some(&b'"') {
        return None;
    }
    let body = start + hashes + 1;
    let closing: Vec<u8> = std::iter::once(b'"')
        .chain(std::iter::repeat_n(b'#', hashes))
        .collect();
    rest[body..]
        .windows(closing.len())
        .position(|w| w == closing.as_slice())
        .map(|p| body + p + closing.len())
}

/// Top-level modules named by `crate::…` paths in `code`, groups (`crate::{a, b::c}`) included.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `sidewire_crate::`, not ours
        }
        let trimmed = rest.trim_start();
        if let Some(group) = trimmed.strip_prefix('{') {
            // Each top-level item of the group starts a path.
            let mut depth = 0usize;
            let mut item_start = true;
            for (index, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphabetic() || c == '_') => {
                        let name: String = group[index..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        found.insert(name);
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = trimmed
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// from → to → the files (relative to `src/`) that carry the edge.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn graph_of(src: &Path) -> (BTreeSet<String>, Graph) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut modules = BTreeSet::new();
    let mut graph = Graph::new();
    let mut sources = Vec::new();
    for file in files {
        let relative = file
            .strip_prefix(src)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string_lossy()
            .replace('\\', "/");
        let first = relative.split('/').next().unwrap_or_default();
        let module = first.strip_suffix(".rs").unwrap_or(first).to_owned();
        if module == "main" || module == "lib" {
            continue; // the crate root and the binary may name anything
        }
        modules.insert(module.clone());
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{relative}: {e}"));
        sources.push((module, relative, code_only(&text)));
    }
    // `pb` is declared inline in lib.rs; `linkproto` re-exports part of it.
    modules.insert("pb".to_owned());
    for (module, relative, code) in sources {
        for target in named_modules(&code) {
            let target = if target == "linkproto" {
                "pb".to_owned()
            } else {
                target
            };
            if target != module && modules.contains(&target) {
                graph
                    .entry(module.clone())
                    .or_default()
                    .entry(target)
                    .or_default()
                    .insert(relative.clone());
            }
        }
    }
    (modules, graph)
}

/// One cycle of `graph` (as a path that returns to its start), if any.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let start = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(cycle) = visit(next, graph, state, stack) {
                        return Some(cycle);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node.as_str()) {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, graph, &mut state, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}

/// Every problem with `graph`: forbidden edges, a cycle, stale or widened pending edges.
fn problems(modules: &BTreeSet<String>, graph: &Graph) -> Vec<String> {
    let mut problems = Vec::new();
    let edge_files = |from: &str, to: &str| graph.get(from).and_then(|targets| targets.get(to));
    for (from, to) in FORBIDDEN {
        for target in modules.iter().filter(|m| *to == "*" || m.as_str() == *to) {
            if let Some(files) = edge_files(from, target) {
                let pending = PENDING
                    .iter()
                    .find(|(f, t, ..)| f == from && t == target)
                    .map(|(_, _, file, _)| *file);
                let unexpected: Vec<_> = files
                    .iter()
                    .filter(|f| Some(f.as_str()) != pending)
                    .collect();
                if !unexpected.is_empty() {
                    problems.push(format!(
                        "forbidden edge {from} → {target} in {unexpected:?}"
                    ));
                }
            }
        }
    }
    for (to, files) in graph.get("protocol").into_iter().flatten() {
        if !PROTOCOL_MAY_USE.contains(&to.as_str()) {
            problems.push(format!(
                "protocol may use only pb, but uses {to} in {files:?}"
            ));
        }
    }
    let mut acyclic: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in graph {
        for (to, files) in targets {
            let pending = PENDING
                .iter()
                .find(|(f, t, ..)| f == from && t == to)
                .map(|(_, _, file, _)| *file);
            let only_pending = pending.is_some_and(|p| files.iter().all(|f| f == p));
            if !only_pending {
                acyclic.entry(from.clone()).or_default().insert(to.clone());
            }
        }
    }
    if let Some(cycle) = find_cycle(&acyclic) {
        problems.push(format!("cycle: {}", cycle.join(" → ")));
    }
    for (from, to, _, why) in PENDING {
        if edge_files(from, to).is_none() {
            problems.push(format!(
                "pending edge {from} → {to} is gone ({why}): remove it from PENDING"
            ));
        }
    }
    problems
}

#[test]
fn module_graph_has_no_cycle_and_no_forbidden_edge() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (modules, graph) = graph_of(&src);
    for (from, targets) in &graph {
        let names: Vec<_> = targets.keys().map(String::as_str).collect();
        println!("{from} -> {}", names.join(" "));
    }
    assert!(
        modules.contains("hub") && modules.contains("link") && graph.contains_key("edge"),
        "the scan found no modules: {modules:?}"
    );
    let problems = problems(&modules, &graph);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The checker itself: a cycle, a forbidden edge and comment-only mentions on a made-up graph.
#[test]
fn checker_sees_cycles_forbidden_edges_and_ignores_comments() {
    let code = code_only(
        "use crate::{link::Link, session::{self, x}};\n\
         // crate::hub in a comment\n\
         let s = \"crate::edge\"; let r = r#\"crate::admin\"#; let c = '\"';\n\
         /* crate::app */ crate::protocol::SERVER_VERSION",
    );
    let named: Vec<_> = named_modules(&code).into_iter().collect();
    assert_eq!(named, ["link", "protocol", "session"]);

    let modules: BTreeSet<String> = ["a", "b", "hub", "session", "edge", "config", "passthrough"]
        .iter()
        .map(|m| (*m).to_owned())
        .collect();
    let edge = |graph: &mut Graph, from: &str, to: &str, file: &str| {
        graph
            .entry(from.to_owned())
            .or_default()
            .entry(to.to_owned())
            .or_default()
            .insert(file.to_owned());
    };
    let mut graph = Graph::new();
    for (from, to, file, _) in PENDING {
        edge(&mut graph, from, to, file);
    }
    edge(&mut graph, "a", "b", "a.rs");
    assert!(problems(&modules, &graph).is_empty());
    edge(&mut graph, "b", "a", "b.rs");
    let found = problems(&modules, &graph);
    assert!(found.iter().any(|p| p.starts_with("cycle")), "{found:?}");
    graph.remove("b");
    edge(&mut graph, "hub", "session", "hub/state.rs");
    edge(&mut graph, "hub", "edge", "hub/grpc.rs");
    let found = problems(&modules, &graph);
    assert!(
        found
            .iter()
            .any(|p| p.contains("forbidden edge hub → session")),
        "{found:?}"
    );
}
