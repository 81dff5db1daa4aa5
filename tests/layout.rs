//! The source tree's shape, as a newcomer meets it: modules form layers (no module uses a
//! sibling that uses it back, however indirectly), and no file is too long to read in one
//! sitting.
//!
//! Module references are read from the text: every `crate::` and `super::` path, in `use`
//! declarations and inline. A parent and its own children may use each other (a parent
//! declares its children and shares items with them); siblings may not form a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest a source file may be.
const MAX_LINES: usize = 500;

/// A module's path from the crate root: `["proxy", "relay"]`.
type ModPath = Vec<String>;

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file holds: `src/proxy/mod.rs` and `src/proxy.rs` are `proxy`.
fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut path: ModPath = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        path.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        path.pop();
    }
    path
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a file names after `crate::` or `super::`, relative to the crate root, with
/// the code's comments left out. A brace group (`crate::{a, b::c}`) yields each item.
fn referenced_paths(text: &str, module: &ModPath) -> Vec<ModPath> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while at < code.len() {
        let rest = &code[at..];
        let (mut base, skip) = if rest.starts_with("crate::") {
            (Vec::new(), "crate::".len())
        } else if rest.starts_with("super::") {
            let mut base = module.clone();
            let mut skip = 0;
            while code[at + skip..].starts_with("super::") {
                base.pop();
                skip += "super::".len();
            }
            (base, skip)
        } else {
            at += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let preceded = at > 0 && is_ident_char(bytes[at - 1] as char);
        at += skip;
        if preceded {
            continue;
        }
        let tail = &code[at..];
        if let Some(group) = tail.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let segs = segments(item.trim());
                if !segs.is_empty() {
                    found.push(base.iter().cloned().chain(segs).collect());
                }
            }
        } else {
            base.extend(segments(tail));
            found.push(base);
        }
    }
    found
}

/// The leading `a::b::c` of `text`, as segments.
fn segments(text: &str) -> Vec<String> {
    let end = text
        .find(|c: char| !(is_ident_char(c) || c == ':'))
        .unwrap_or(text.len());
    text[..end]
        .split("::")
        .take_while(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The deepest module that `path` names (it may go on to name an item in it).
fn resolve(path: &[String], modules: &BTreeSet<ModPath>) -> ModPath {
    let mut best = Vec::new();
    for n in 1..=path.len() {
        if modules.contains(&path[..n].to_vec()) {
            best = path[..n].to_vec();
        }
    }
    best
}

/// For a reference from `from` to `to`: the two sibling modules it joins, if neither is an
/// ancestor of the other.
fn siblings(from: &ModPath, to: &ModPath) -> Option<(ModPath, ModPath)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if common == from.len() || common == to.len() {
        return None;
    }
    Some((from[..=common].to_vec(), to[..=common].to_vec()))
}

/// A circle in `edges`, as the modules on it, if there is one.
fn find_cycle(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Option<Vec<ModPath>> {
    fn visit(
        node: &ModPath,
        edges: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        done: &mut BTreeSet<ModPath>,
        stack: &mut Vec<ModPath>,
    ) -> Option<Vec<ModPath>> {
        if let Some(i) = stack.iter().position(|n| n == node) {
            return Some(stack[i..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, done, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut done, &mut Vec::new()))
}

/// The sibling-to-sibling uses of the crate under `src`.
fn sibling_uses(src: &Path) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mut files = Vec::new();
    source_files(src, &mut files);
    let modules: BTreeSet<ModPath> = files.iter().map(|f| module_of(src, f)).collect();
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for file in &files {
        let module = module_of(src, file);
        let text = std::fs::read_to_string(file).expect("read source");
        for path in referenced_paths(&text, &module) {
            let target = resolve(&path, &modules);
            if let Some((a, b)) = siblings(&module, &target) {
                edges.entry(a).or_default().insert(b);
            }
        }
    }
    edges
}

#[test]
fn modules_form_layers_without_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = sibling_uses(&src);
    assert!(
        edges.len() > 5,
        "the reader found too few uses to judge: {edges:?}"
    );
    if let Some(cycle) = find_cycle(&edges) {
        let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
        panic!("modules use each other in a circle: {}", names.join(" → "));
    }
}

#[test]
fn the_reader_sees_a_circle_where_there_is_one() {
    let dir = std::env::temp_dir().join(format!("rpcpin-layout-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("outer")).unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    write("lib.rs", "mod a;\nmod b;\nmod outer;\n");
    write("a.rs", "use crate::outer::inner::Thing;\n");
    write("outer/mod.rs", "mod inner;\nmod other;\n");
    write("outer/inner.rs", "use super::{other::X};\n");
    write(
        "outer/other.rs",
        "// crate::a is only a comment\nfn f() { crate::b::g(); }\n",
    );
    write("b.rs", "use crate::{a::Y, outer};\n");
    let edges = sibling_uses(&dir);
    let cycle = find_cycle(&edges).map(|c| c.iter().map(|m| m.join("::")).collect::<Vec<_>>());
    std::fs::remove_dir_all(&dir).unwrap();
    // a → outer → b → a; inside outer, inner → other only.
    assert_eq!(cycle, Some(vec!["a".into(), "outer".into(), "b".into()]));
    let inner = vec!["outer".to_string(), "inner".to_string()];
    let other = vec!["outer".to_string(), "other".to_string()];
    assert_eq!(edges.get(&inner), Some(&BTreeSet::from([other])));
}

#[test]
fn no_source_file_is_too_long_to_read_in_one_sitting() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).ok()?.lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines: {}",
        long.join(", ")
    );
}
