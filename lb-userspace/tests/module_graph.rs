//! Keeps lb-userspace's module graph acyclic at two levels: the crate's top-level modules,
//! and the sibling modules inside each folder. The sources are read as text (no `syn`): a
//! scanner blanks comments and literals, drops `#[cfg(test)] mod` blocks (test code may
//! reach anywhere) and collects each file's `crate::`/`super::`/`self::` paths and bare
//! paths to its child modules, in `use` declarations and in code.
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fs, io,
    path::Path,
};

type ModPath = Vec<String>;
/// A token and its line.
type Tok = (String, usize);
/// module -> (its file, as shown in reports; the paths it names).
type Modules = BTreeMap<ModPath, (String, Vec<Leaf>)>;
/// (from, to) -> the file:lines of the imports.
type Edges = BTreeMap<(String, String), BTreeSet<(String, usize)>>;

/// One path a file names: its segments (`*` for a glob), its `as` alias, its line, and
/// whether it is a `pub use` (a re-export, which facades are resolved through).
struct Leaf {
    segs: ModPath,
    alias: Option<String>,
    line: usize,
    public: bool,
}

/// The import cycles among the modules under `src`, one text per cycle: the chain
/// (`config -> health -> config`), then a line per hop with the file:line of its imports.
pub fn module_cycles(src: &Path) -> io::Result<Vec<String>> {
    let mut modules = Modules::from([(Vec::new(), (String::new(), Vec::new()))]); // the root
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(dir)? {
            let file = entry?.path();
            if file.is_dir() {
                dirs.push(file);
                continue;
            }
            let rel = file.strip_prefix(src).expect("under src").to_string_lossy();
            let Some(stem) = rel.strip_suffix(".rs") else {
                continue;
            };
            let m: ModPath = stem
                .split('/')
                .filter(|s| *s != "mod")
                .map(Into::into)
                .collect();
            if m == ["lib"] || m == ["main"] {
                continue; // the root's own `mod`/`use` lines say nothing about layering
            }
            let leaves = leaves(&tokens(&strip(&fs::read_to_string(&file)?)));
            modules.insert(m, (format!("src/{rel}"), leaves));
        }
    }
    // folder -> its edges. An import is an edge in the deepest folder holding both ends,
    // between the children of that folder they are under; the crate root is a folder too.
    let mut graph: BTreeMap<ModPath, Edges> = BTreeMap::new();
    for (m, (shown, leaves)) in &modules {
        for leaf in leaves {
            let t = resolve(&modules, m, &leaf.segs).unwrap_or_default(); // other crates: root
            let common = m.iter().zip(&t).take_while(|(a, b)| a == b).count();
            // Ignored: edges to the root, a facade's to its children, unresolved ones to a facade.
            if common < m.len() && common < t.len() {
                let hop = (m[common].clone(), t[common].clone());
                let edges = graph.entry(m[..common].to_vec()).or_default();
                edges
                    .entry(hop)
                    .or_default()
                    .insert((shown.clone(), leaf.line));
            }
        }
    }
    let mut out = Vec::new();
    for (folder, edges) in &graph {
        let name = |n: &String| [&folder[..], std::slice::from_ref(n)].concat().join("::");
        for cycle in cycles(edges) {
            let mut text = cycle.iter().map(name).collect::<Vec<_>>().join(" -> ");
            for hop in cycle.windows(2) {
                let (from, to) = (name(&hop[0]), name(&hop[1]));
                text += &format!("\n  {from} -> {to}:");
                for (file, line) in &edges[&(hop[0].clone(), hop[1].clone())] {
                    text += &format!(" {file}:{line}");
                }
            }
            out.push(text);
        }
    }
    Ok(out)
}

/// `segs` as a path from the crate root, read in module `m`; `None` for other crates.
fn absolute(modules: &Modules, m: &[String], segs: &[String]) -> Option<ModPath> {
    Some(match segs.first()?.as_str() {
        "crate" => segs[1..].to_vec(),
        "self" => [m, &segs[1..]].concat(),
        "super" => {
            let ups = segs.iter().take_while(|s| *s == "super").count();
            [&m[..m.len().checked_sub(ups)?], &segs[ups..]].concat()
        }
        // 2018 paths: a bare `http::X` in `proxy/mod.rs` is its child module `http`.
        child if modules.contains_key(&[m, &[child.to_string()]].concat()) => [m, segs].concat(),
        _ => return None,
    })
}

/// The module a path names: its longest prefix that is a module, followed through `pub use`
/// re-exports of the next segment (`pub use model::Config;` in `config/mod.rs` makes
/// `super::Config` in `config/validate.rs` mean `config::model`).
fn resolve(modules: &Modules, m: &[String], segs: &[String]) -> Option<ModPath> {
    let mut full = absolute(modules, m, segs)?;
    for _ in 0..8 {
        let k = (0..=full.len())
            .rev()
            .find(|k| modules.contains_key(&full[..*k]))?;
        let (target, rest) = full.split_at(k);
        let reexport = rest.first().and_then(|name| {
            modules[target].1.iter().find(|l| {
                l.public && l.segs.len() > 1 && l.alias.as_ref().or(l.segs.last()) == Some(name)
            })
        });
        match reexport.and_then(|l| absolute(modules, target, &l.segs)) {
            Some(next) => full = [&next[..], &rest[1..]].concat(),
            None => return Some(target.to_vec()),
        }
    }
    None // a loop of re-exports: drop the path
}

/// Every cycle through some edge: for each edge u -> v, the shortest path from v back to u.
/// Each is rotated to start at its smallest name, so that it is listed once.
fn cycles(edges: &Edges) -> BTreeSet<Vec<String>> {
    let mut found = BTreeSet::new();
    for (u, v) in edges.keys() {
        let mut prev = BTreeMap::from([(v, v)]); // breadth-first from v; also the visited set
        let mut queue = VecDeque::from([v]);
        while let Some(n) = queue.pop_front() {
            for (_, b) in edges.keys().filter(|(a, _)| a == n) {
                prev.entry(b).or_insert_with(|| {
                    queue.push_back(b);
                    n
                });
            }
        }
        if !prev.contains_key(u) {
            continue;
        }
        let (mut cycle, mut at) = (vec![u.clone()], u);
        while at != v {
            at = prev[at];
            cycle.push(at.clone());
        }
        cycle.reverse(); // v -> ... -> u, closed by u -> v
        let min = (0..cycle.len())
            .min_by_key(|i| &cycle[*i])
            .expect("not empty");
        cycle.rotate_left(min);
        cycle.push(cycle[0].clone());
        found.insert(cycle);
    }
    found
}

/// Blank out comments and string/char literals, keeping line breaks, so that neither
/// `// crate::x` nor `'{'` is read as code.
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let at = |k: usize, s: &str| s.chars().enumerate().all(|(j, x)| c.get(k + j) == Some(&x));
    let find = |from: usize, s: &str| (from..c.len()).find(|k| at(*k, s)).unwrap_or(c.len());
    let word = |k: usize| c.get(k).is_some_and(|x| x.is_alphanumeric() || *x == '_');
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        let start = i;
        // A raw string (r"..", r#".."#, br".."): its `r` starts a word, or follows a `b`/`c`.
        let r = if at(i, "r") { i } else { i + 1 };
        let hashes = (r + 1..c.len()).take_while(|k| c[*k] == '#').count();
        let raw = (i == 0 || !word(i - 1))
            && (r == i || at(i, "br") || at(i, "cr"))
            && at(r + 1 + hashes, "\"");
        if at(i, "//") {
            i = find(i, "\n");
        } else if at(i, "/*") {
            let mut depth = 0; // block comments nest
            while i < c.len() {
                let step = i32::from(at(i, "/*")) - i32::from(at(i, "*/"));
                depth += step;
                i += if step == 0 { 1 } else { 2 };
                if depth == 0 {
                    break;
                }
            }
        } else if raw {
            let close = format!("\"{}", "#".repeat(hashes)); // no escapes inside
            i = find(r + 2 + hashes, &close) + close.len();
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c[i] == '\'' && (at(i + 1, "\\") || at(i + 2, "'")) {
            i = find(i + 2, "'") + 1; // a char literal, not a lifetime
        } else {
            out.push(c[i]);
            i += 1;
            continue;
        }
        let blank = c[start..i.min(c.len())].iter();
        out.extend(blank.map(|&x| if x == '\n' { '\n' } else { ' ' }));
    }
    out
}

fn is_word(s: &str) -> bool {
    s.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Words, `::` and single punctuation characters, each with its line.
fn tokens(text: &str) -> Vec<Tok> {
    let mut out: Vec<Tok> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut chars = line.chars().peekable();
        while let Some(ch) = chars.next() {
            let mut tok = ch.to_string();
            if is_word(&tok) {
                while let Some(x) = chars.next_if(|x| is_word(&x.to_string())) {
                    tok.push(x);
                }
            } else if ch == ':' && chars.next_if_eq(&':').is_some() {
                tok.push(':');
            } else if ch.is_whitespace() {
                continue;
            }
            out.push((tok, n + 1));
        }
    }
    out
}

/// The paths a file names, outside `#[cfg(test)] mod` blocks.
fn leaves(t: &[Tok]) -> Vec<Leaf> {
    let is = |i: usize, s: &str| t.get(i).is_some_and(|x| x.0 == s);
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let cfg_test = ["#", "[", "cfg", "(", "test", ")", "]"];
        if cfg_test.iter().enumerate().all(|(j, s)| is(i + j, s)) {
            let mut j = i + cfg_test.len();
            while is(j, "#") {
                j = skip_group(t, j + 1); // more attributes
            }
            j += usize::from(is(j, "pub"));
            if is(j, "mod") && is(j + 2, "{") {
                i = skip_group(t, j + 2);
                continue;
            }
        }
        let after = |s: &str| i > 0 && is(i - 1, s);
        if is(i, "use") {
            let public = after("pub") || after(")"); // `pub use`, `pub(crate) use`
            i = tree(t, i + 1, Vec::new(), public, &mut out);
        } else if is(i + 1, "::") && !after("::") && is_word(&t[i].0) {
            i = tree(t, i, Vec::new(), false, &mut out); // `resolve` drops other crates'
        } else {
            i += 1;
        }
    }
    out
}

/// Parse a path or use tree (`a::b::{c, d::{self, E as F}, *}`) from `i`, pushing a leaf
/// per name; returns the index after it.
fn tree(t: &[Tok], mut i: usize, mut segs: ModPath, public: bool, out: &mut Vec<Leaf>) -> usize {
    let tok = |i: usize| t.get(i).map(|x| x.0.as_str());
    let mut line = t.get(i).map_or(0, |x| x.1);
    loop {
        match tok(i) {
            Some("{") => {
                i += 1;
                while !matches!(tok(i), None | Some("}")) {
                    i = tree(t, i, segs.clone(), public, out);
                    if tok(i) != Some(",") {
                        break;
                    }
                    i += 1;
                }
                return i + 1;
            }
            Some("self") if !segs.is_empty() => i += 1, // `{self, ..}` names the prefix
            Some(s) if s == "*" || is_word(s) => {
                segs.push(s.to_string());
                line = t[i].1;
                i += 1;
            }
            _ => break,
        }
        if tok(i) != Some("::") {
            break;
        }
        i += 1;
    }
    let alias = tok(i)
        .filter(|s| *s == "as")
        .and(tok(i + 1))
        .map(String::from);
    i += if alias.is_some() { 2 } else { 0 };
    out.push(Leaf {
        segs,
        alias,
        line,
        public,
    });
    i
}

/// The index after the bracketed group that opens at `i`.
fn skip_group(t: &[Tok], mut i: usize) -> usize {
    let mut depth = 0;
    while let Some((s, _)) = t.get(i) {
        depth += i32::from(["{", "[", "("].contains(&s.as_str()));
        depth -= i32::from(["}", "]", ")"].contains(&s.as_str()));
        i += 1;
        if depth == 0 {
            break;
        }
    }
    i
}

#[test]
fn lb_userspace_modules_are_acyclic() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let cycles = module_cycles(&src).expect("read lb-userspace/src");
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

/// The cycles of a throwaway source tree, written as `== path` lines each followed by the
/// file's text.
fn cycles_of(name: &str, files: &str) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("module-graph-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for file in files.split("== ").skip(1) {
        let (path, text) = file.split_once('\n').expect("a path line");
        let path = dir.join(path);
        fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }
    let cycles = module_cycles(&dir).expect("read the tree");
    fs::remove_dir_all(&dir).expect("clean up");
    cycles
}

#[test]
fn reports_a_top_level_cycle_with_its_lines() {
    let cycles = cycles_of(
        "top",
        "== lib.rs\npub mod a;\npub mod b;\n\
        == a.rs\nuse crate::b::X;\npub struct Y;\n\
        == b.rs\npub struct X;\nfn f() -> crate::a::Y { todo!() }\n",
    );
    assert_eq!(
        cycles,
        ["a -> b -> a\n  a -> b: src/a.rs:1\n  b -> a: src/b.rs:2"]
    );
}

#[test]
fn reports_a_sibling_cycle_through_grouped_and_bare_paths() {
    let cycles = cycles_of(
        "folder",
        "== lib.rs\npub mod p;\n\
        == p/mod.rs\npub mod x;\npub mod y;\nuse x::A;\n\
        == p/x.rs\nuse super::{\n    y::{B, C},\n};\npub struct A;\n\
        == p/y.rs\npub struct B;\npub struct C;\nfn f() { let _ = super::x::A; }\n",
    );
    assert_eq!(
        cycles,
        ["p::x -> p::y -> p::x\n  p::x -> p::y: src/p/x.rs:2\n  p::y -> p::x: src/p/y.rs:3"]
    );
}

#[test]
fn follows_a_facades_reexports() {
    let cycles = cycles_of(
        "facade",
        "== lib.rs\npub mod q;\n\
        == q/mod.rs\nmod m;\nmod v;\npub use self::m::Cfg as Config;\n\
        == q/m.rs\npub struct Cfg;\nfn f() { super::v::check(); }\n\
        == q/v.rs\npub fn check() { let _: super::Config; }\n",
    );
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert!(
        cycles[0].starts_with("q::m -> q::v -> q::m\n"),
        "{}",
        cycles[0]
    );
}

#[test]
fn passes_acyclic_trees_and_skips_comments_strings_and_tests() {
    let cycles = cycles_of(
        "ok",
        "== lib.rs\npub mod a;\npub mod b;\npub mod c;\npub mod q;\n\
        == a.rs\nuse crate::b::X;\n// crate::c::Z\nconst S: &str = \"crate::c::Z {\";\nconst B: char = '{';\n\
        == b.rs\npub struct X;\n/* crate::a /* nested */ crate::a */\nconst R: &str = r#\"crate::a\"#;\n\
        == c.rs\npub struct Z;\n#[cfg(test)]\nmod tests {\n    use crate::a::*;\n    fn f() { crate::b::X; }\n}\n\
        == q/mod.rs\nmod m;\nmod v;\npub use m::Cfg;\nuse v::check;\n\
        == q/m.rs\npub struct Cfg;\n\
        == q/v.rs\nuse super::Cfg;\npub fn check(_: &Cfg) {}\n",
    );
    assert_eq!(cycles, Vec::<String>::new());
}
