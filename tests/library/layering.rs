//! The layering of `src/` stays true: read from the `use` lines and paths of every file, no file
//! imports one that imports it back (directly or around a circle), and no module imports one of
//! a higher layer than its own. [`LAYERS`] is the README's architecture table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules of `src/`, bottom layer first; a module may import its own layer and the
/// layers below. `main` is the binary's root, `src/main.rs`.
const LAYERS: &[&[&str]] = &[
    &[
        "budget",
        "progress",
        "interrupt",
        "choice",
        "partition",
        "layout",
        "device",
    ],
    &[
        "io",
        "data",
        "journal",
        "checkpoint",
        "launcher",
        "weight_files",
    ],
    &["models", "dist"],
    &["captions", "sampling", "feature_set"],
    &["metric", "record", "evaluate", "check", "report"],
    &["pipeline"],
    &["demo", "doctor", "inspect"],
    &["cli", "main"],
];

/// A file of `src/` by its module path (`["pipeline", "jobs", "fid"]`; the crate root is `[]`).
type ModulePath = Vec<String>;

struct Crate {
    /// Module path to file, for every file of `src/`.
    files: BTreeMap<ModulePath, PathBuf>,
    /// Re-exports of each module file: item name to the path it re-exports.
    reexports: BTreeMap<ModulePath, BTreeMap<String, Vec<String>>>,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn module_path(file: &Path) -> ModulePath {
    let relative = file.strip_prefix(src()).expect("a file of src/");
    let mut path: ModulePath = relative
        .with_extension("")
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if matches!(path.last().map(String::as_str), Some("mod" | "lib")) {
        path.pop();
    }
    path
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text of a Rust file without its comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("a readable source file");
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string literal is rare in these files, and cutting there only
            // drops code after it on that line.
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a `use` tree names: `a::{b, c::{d, e}}` gives `a::b`, `a::c::d`, `a::c::e`.
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    fn split_top(s: &str) -> Vec<&str> {
        let (mut depth, mut start, mut parts) = (0, 0, Vec::new());
        for (i, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        parts
    }
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree);
        return vec![path.split("::").map(|s| s.trim().to_owned()).collect()];
    };
    let prefix: Vec<String> = tree[..open]
        .trim_end_matches("::")
        .split("::")
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().to_owned())
        .collect();
    let inner = &tree[open + 1..tree.rfind('}').expect("a closed use group")];
    split_top(inner)
        .into_iter()
        .filter(|part| !part.trim().is_empty())
        .flat_map(expand_use)
        .map(|rest| {
            let mut path = prefix.clone();
            path.extend(rest.into_iter().filter(|s| s != "self"));
            path
        })
        .collect()
}

/// The paths a file's code names: its `use` statements (and, apart, its `pub use` re-exports)
/// and the paths written in its code.
fn named_paths(code: &str) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let mut uses = Vec::new();
    let mut reexports = Vec::new();
    let mut lines = code.lines();
    while let Some(line) = lines.next() {
        let line = line.trim_start();
        let (public, statement) = if let Some(rest) = line.strip_prefix("pub use ") {
            (true, rest)
        } else if let Some(rest) = line.strip_prefix("pub(crate) use ") {
            (false, rest)
        } else if let Some(rest) = line.strip_prefix("use ") {
            (false, rest)
        } else {
            continue;
        };
        let mut tree = statement.to_owned();
        while !tree.contains(';') {
            let Some(next) = lines.next() else {
                break;
            };
            tree.push_str(next);
        }
        let tree = tree.split(';').next().unwrap_or_default();
        let paths = expand_use(tree);
        if public {
            reexports.extend(paths.clone());
        }
        uses.extend(paths);
    }
    // Paths written in code, e.g. `crate::io::check_output_file(out)`.
    let bytes = code.as_bytes();
    for root in ["crate::", "super::", "llamagen_eval::"] {
        let mut from = 0;
        while let Some(found) = code[from..].find(root) {
            let start = from + found;
            from = start + root.len();
            let boundary = start == 0
                || !(bytes[start - 1].is_ascii_alphanumeric()
                    || bytes[start - 1] == b'_'
                    || bytes[start - 1] == b':');
            if !boundary {
                continue;
            }
            let mut end = start;
            while end < bytes.len()
                && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':')
            {
                end += 1;
            }
            let path: Vec<String> = code[start..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            uses.push(path);
        }
    }
    (uses, reexports)
}

impl Crate {
    fn read() -> Self {
        let mut paths = Vec::new();
        rust_files(&src(), &mut paths);
        let files: BTreeMap<ModulePath, PathBuf> =
            paths.into_iter().map(|p| (module_path(&p), p)).collect();
        let mut reexports = BTreeMap::new();
        for (module, path) in &files {
            let (_, public) = named_paths(&code(path));
            let map: BTreeMap<String, Vec<String>> = public
                .into_iter()
                .filter_map(|p| Some((p.last()?.clone(), p)))
                .collect();
            reexports.insert(module.clone(), map);
        }
        Crate { files, reexports }
    }

    /// `path` as written in the file of `module`, made absolute (from the crate root).
    fn absolute(&self, module: &ModulePath, path: &[String]) -> Option<ModulePath> {
        let (first, rest) = path.split_first()?;
        let file_module = module.clone();
        let mut base: ModulePath = match first.as_str() {
            "crate" | "llamagen_eval" => Vec::new(),
            "self" => file_module,
            "super" => {
                let mut parent = file_module;
                parent.pop()?;
                parent
            }
            // A path relative to the file's module (a child module or a re-export).
            name if self
                .files
                .contains_key(&[file_module.clone(), vec![name.to_owned()]].concat()) =>
            {
                let mut base = file_module;
                base.push(name.to_owned());
                return Some([base, rest.to_vec()].concat());
            }
            _ => return None,
        };
        let mut rest = rest.to_vec();
        while rest.first().map(String::as_str) == Some("super") {
            base.pop()?;
            rest.remove(0);
        }
        base.extend(rest);
        Some(base)
    }

    /// The file an absolute path lands in, following re-exports.
    fn resolve(&self, path: &ModulePath, depth: usize) -> Option<ModulePath> {
        let mut module = Vec::new();
        for (i, segment) in path.iter().enumerate() {
            let mut next = module.clone();
            next.push(segment.clone());
            if self.files.contains_key(&next) {
                module = next;
                continue;
            }
            // An item of `module`: re-exported from elsewhere, or its own.
            if depth < 8 {
                if let Some(target) = self.reexports.get(&module).and_then(|r| r.get(segment)) {
                    let absolute = self.absolute(&module, target)?;
                    let mut followed = absolute;
                    followed.extend(path[i + 1..].iter().cloned());
                    if let Some(found) = self.resolve(&followed, depth + 1) {
                        return Some(found);
                    }
                }
            }
            break;
        }
        Some(module)
    }

    /// Every file `module`'s file imports (itself and the crate root left out).
    fn imports(&self, module: &ModulePath) -> BTreeSet<ModulePath> {
        let (uses, _) = named_paths(&code(&self.files[module]));
        uses.iter()
            .filter_map(|path| self.absolute(module, path))
            .filter_map(|path| self.resolve(&path, 0))
            .filter(|target| !target.is_empty() && target != module)
            .filter(|target| !module.starts_with(target))
            .collect()
    }
}

fn layer_of(module: &ModulePath) -> usize {
    let top = module.first().map_or("", String::as_str);
    LAYERS
        .iter()
        .position(|layer| layer.contains(&top))
        .unwrap_or_else(|| {
            panic!(
                "src/{top}: in no layer of the architecture table; add it to LAYERS and the README"
            )
        })
}

#[test]
fn no_module_imports_a_higher_layer() {
    let krate = Crate::read();
    let mut wrong = Vec::new();
    for module in krate.files.keys().filter(|m| !m.is_empty()) {
        for target in krate.imports(module) {
            if layer_of(&target) > layer_of(module) {
                wrong.push(format!(
                    "{} imports {}",
                    module.join("::"),
                    target.join("::")
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "lower layers import higher ones:\n{}",
        wrong.join("\n")
    );
}

/// Every circle of files in `graph` that import each other, as `a -> b -> a`.
fn circles(graph: &BTreeMap<ModulePath, BTreeSet<ModulePath>>) -> Vec<String> {
    // Depth-first search; an edge back into the current path closes a circle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &ModulePath,
        graph: &BTreeMap<ModulePath, BTreeSet<ModulePath>>,
        marks: &mut BTreeMap<ModulePath, Mark>,
        stack: &mut Vec<ModulePath>,
        circles: &mut Vec<String>,
    ) {
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next) {
                Some(Mark::Open) => {
                    let from = stack.iter().position(|m| m == next).unwrap_or(0);
                    let circle: Vec<String> = stack[from..].iter().map(|m| m.join("::")).collect();
                    circles.push(format!("{} -> {}", circle.join(" -> "), next.join("::")));
                }
                Some(Mark::Done) => {}
                None => visit(next, graph, marks, stack, circles),
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let mut found = Vec::new();
    for node in graph.keys() {
        if !marks.contains_key(node) {
            visit(node, graph, &mut marks, &mut Vec::new(), &mut found);
        }
    }
    found
}

#[test]
fn no_files_import_each_other_around_a_circle() {
    let krate = Crate::read();
    let graph: BTreeMap<ModulePath, BTreeSet<ModulePath>> = krate
        .files
        .keys()
        .filter(|m| !m.is_empty())
        .map(|m| (m.clone(), krate.imports(m)))
        .collect();
    let found = circles(&graph);
    assert!(
        found.is_empty(),
        "files that import each other:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_reader_sees_imports_and_circles() {
    // The checks above are only as good as the reading: it must find these known imports.
    let krate = Crate::read();
    let imports = krate.imports(&vec!["pipeline".into(), "jobs".into(), "fid".into()]);
    for expected in [
        &["dist", "job"][..],
        &["pipeline", "jobs", "generate"],
        &["evaluate"],
        &["layout"],
    ] {
        let expected: ModulePath = expected.iter().map(|s| s.to_string()).collect();
        assert!(
            imports.contains(&expected),
            "pipeline::jobs::fid should import {expected:?}: {imports:?}"
        );
    }
    let grouped = expand_use("crate::dist::{clean_up, part::{PartReport, RankPart}, Part}");
    assert_eq!(grouped.len(), 4);
    assert_eq!(grouped[1], ["crate", "dist", "part", "PartReport"]);
    assert!(layer_of(&vec!["data".into()]) < layer_of(&vec!["pipeline".into()]));
    // The circle finder finds a circle of three, and none in a chain.
    let path = |s: &str| -> ModulePath { vec![s.to_owned()] };
    let chain: BTreeMap<ModulePath, BTreeSet<ModulePath>> = [
        (path("a"), BTreeSet::from([path("b")])),
        (path("b"), BTreeSet::from([path("c")])),
        (path("c"), BTreeSet::new()),
    ]
    .into();
    assert!(circles(&chain).is_empty());
    let mut circle = chain;
    circle.insert(path("c"), BTreeSet::from([path("a")]));
    assert_eq!(circles(&circle), ["a -> b -> c -> a"]);
}
