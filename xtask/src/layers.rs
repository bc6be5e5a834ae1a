//! `cargo xtask layers`: hoop-daemon's modules in layers, bottom to top; a
//! module may use only what lies in its own layer or below. Reads every
//! `crate::…` path in `hoop-daemon/src` (use lines and inline paths alike)
//! and names each one that reaches upward. docs/architecture.md draws the
//! same table.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};

use crate::sh::root_dir;

/// Bottom to top. Keep in step with docs/architecture.md.
pub const LAYERS: &[(&str, &[&str])] = &[
    (
        "platform",
        &["sys", "cgroup", "users", "logging", "addr", "path_error"],
    ),
    (
        "schema",
        &["config", "egress", "tls", "outbound", "metrics"],
    ),
    ("domain", &["identity", "jobs", "flow", "policy", "trust"]),
    ("services", &["audit", "approval", "fleet", "review"]),
    ("data path", &["pipeline", "capture"]),
    ("edges", &["accept", "proxy", "control", "console"]),
    ("app", &["daemon", "cli"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

/// One upward reference: file, line, from-module, to-module.
pub struct Upward {
    pub file: PathBuf,
    pub line: usize,
    pub from: String,
    pub to: String,
}

/// Every `crate::X` in `text`, with its line number: plain paths, and each
/// top-level name of a `crate::{…}` group, which may span lines.
fn crate_refs(text: &str) -> Vec<(usize, String)> {
    // The code without its line comments, each char with its line.
    let code: Vec<(char, usize)> = text
        .lines()
        .enumerate()
        .flat_map(|(n, l)| {
            l.split("//")
                .next()
                .unwrap_or("")
                .chars()
                .chain(['\n'])
                .map(move |c| (c, n + 1))
        })
        .collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    // The name starting at `i` (after whitespace), and where it is.
    let name_at = |mut i: usize| -> Option<(usize, String)> {
        while code.get(i).is_some_and(|(c, _)| c.is_whitespace()) {
            i += 1;
        }
        let name: String = code[i.min(code.len())..]
            .iter()
            .map(|(c, _)| *c)
            .take_while(|c| ident(*c))
            .collect();
        (!name.is_empty()).then(|| (code[i].1, name))
    };
    let chars: String = code.iter().map(|(c, _)| *c).collect();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = chars[from..].find("crate::") {
        // `chars` is indexed by bytes, `code` by chars: the source is ASCII
        // where it matters (paths), so map through char_indices.
        let at = chars[..from + found].chars().count() + "crate::".len();
        from += found + "crate::".len();
        if code.get(at).map(|(c, _)| *c) != Some('{') {
            out.extend(name_at(at));
            continue;
        }
        // A group: each top-level item's first name.
        let mut depth = 0;
        let mut item_start = at + 1;
        for (i, (c, _)) in code.iter().enumerate().skip(at) {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        out.extend(name_at(item_start));
                        break;
                    }
                }
                ',' if depth == 1 => {
                    out.extend(name_at(item_start));
                    item_start = i + 1;
                }
                _ => {}
            }
        }
    }
    out
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            rs_files(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// The top-level module a source file belongs to (`pipeline/http.rs` →
/// `pipeline`), or None for lib.rs and main.rs.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

pub fn upward() -> Result<Vec<Upward>> {
    let src = root_dir().join("hoop-daemon/src");
    let mut files = Vec::new();
    rs_files(&src, &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let Some(from) = module_of(&src, &file) else {
            continue;
        };
        let Some(own) = layer_of(&from) else {
            bail!(
                "module {from} is in no layer: add it to xtask/src/layers.rs and docs/architecture.md"
            );
        };
        let text = std::fs::read_to_string(&file)?;
        for (line, to) in crate_refs(&text) {
            if to == from {
                continue;
            }
            // Names that are not modules (macros, re-exports) have no layer.
            if layer_of(&to).is_some_and(|l| l > own) {
                out.push(Upward {
                    file: file.strip_prefix(root_dir()).unwrap_or(&file).to_path_buf(),
                    line,
                    from: from.clone(),
                    to,
                });
            }
        }
    }
    Ok(out)
}

/// Prints every upward reference, grouped by module pair; fails if any.
pub fn run() -> Result<()> {
    let ups = upward()?;
    let mut pairs: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for u in &ups {
        pairs
            .entry((u.from.clone(), u.to.clone()))
            .or_default()
            .push(format!("{}:{}", u.file.display(), u.line));
    }
    for ((from, to), at) in &pairs {
        println!(
            "{from} -> {to} (upward, {} place(s)): {}",
            at.len(),
            at.join(", ")
        );
    }
    if ups.is_empty() {
        println!("layers: no upward imports in hoop-daemon/src");
        return Ok(());
    }
    bail!(
        "{} upward import(s) between {} module pair(s); see the layer table in xtask/src/layers.rs",
        ups.len(),
        pairs.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_plain_braced_and_inline_references() {
        let refs = crate_refs(
            "use crate::{config::Config, pipeline};\nlet x = crate::audit::Entry::of(1); // crate::cli\n",
        );
        let names: Vec<&str> = refs.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["config", "pipeline", "audit"]);
        assert_eq!(refs[2].0, 2);
        // A group over several lines, nested groups inside it.
        let refs = crate_refs(
            "use crate::{\n    audit::{\n        entry::{A, B},\n        query,\n    },\n    flow::Flow, // crate::cli\n    policy,\n};\n",
        );
        let found: Vec<(usize, &str)> = refs.iter().map(|(l, n)| (*l, n.as_str())).collect();
        assert_eq!(found, [(2, "audit"), (6, "flow"), (7, "policy")]);
    }

    #[test]
    fn every_layer_lists_distinct_modules() {
        let mut all: Vec<&str> = LAYERS.iter().flat_map(|(_, m)| m.iter().copied()).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
