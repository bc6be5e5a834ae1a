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
    ("services", &["audit", "approval", "fleet"]),
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

/// Every `crate::X` in `text`, with its line number.
fn crate_refs(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((n + 1, name));
            }
            // `use crate::{a, b::c}`: each top-level name in the braces.
            if let Some(inner) = after.strip_prefix('{') {
                for part in inner.split(',') {
                    let name: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.push((n + 1, name));
                    }
                }
            }
            rest = after;
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
