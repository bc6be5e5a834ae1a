//! The installed binary without its debug info, and the debug info beside
//! it the way distributions keep it: `/usr/lib/debug/.build-id/xx/rest.debug`,
//! named by the binary's GNU build-id, where gdb, `debuginfod`-style tools
//! and `coredumpctl` look. The binary keeps its symbol table (names in
//! backtraces) and gets a `.gnu_debuglink` to the debug file.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::sh::{output, run};

/// The binutils this needs (objcopy, readelf).
pub const PACKAGES: [&str; 1] = ["binutils"];

/// A binary split into what is installed and what goes beside it.
pub struct Split {
    /// The binary to install: debug sections removed, a debuglink added.
    pub stripped: PathBuf,
    /// The debug file, already in place under the root.
    pub debug_file: PathBuf,
    pub build_id: String,
}

/// The GNU build-id of an ELF file, in hex, from `readelf -n`.
pub fn build_id(elf: &Path) -> Result<String> {
    let notes = output(Command::new("readelf").arg("-n").arg(elf))?;
    notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .map(|id| id.trim().to_string())
        .filter(|id| id.len() > 2 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .with_context(|| {
            format!(
                "{} has no GNU build-id (link it with -Wl,--build-id)",
                elf.display()
            )
        })
}

/// The section names of an ELF file, from `readelf -S`.
pub fn sections(elf: &Path) -> Result<Vec<String>> {
    let table = output(Command::new("readelf").args(["-S", "-W"]).arg(elf))?;
    Ok(table
        .lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix('[')?;
            let (_, after) = rest.split_once(']')?;
            after.split_whitespace().next().map(str::to_string)
        })
        .collect())
}

/// Where the debug file for `build_id` goes under `root`.
pub fn debug_path(root: &Path, build_id: &str) -> PathBuf {
    let (dir, rest) = build_id.split_at(2);
    root.join("usr/lib/debug/.build-id")
        .join(dir)
        .join(format!("{rest}.debug"))
}

/// Writes the debug file of `bin` under `root` and a stripped copy of
/// `bin` into `work`.
pub fn split(bin: &Path, root: &Path, work: &Path) -> Result<Split> {
    let build_id = build_id(bin)?;
    let debug_file = debug_path(root, &build_id);
    // Made in `work` under its final name: the debuglink records the
    // file's name and CRC.
    let made = work.join(debug_file.file_name().unwrap());
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(bin)
        .arg(&made))?;
    let stripped = work.join("hoop");
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(format!("--add-gnu-debuglink={}", made.display()))
        .arg(bin)
        .arg(&stripped))?;
    let dir = debug_file.parent().unwrap();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::copy(&made, &debug_file)
        .with_context(|| format!("installing {}", debug_file.display()))?;
    std::fs::set_permissions(&debug_file, std::fs::Permissions::from_mode(0o644))?;
    if sections(&stripped)?.iter().any(|s| s == ".debug_info") {
        bail!("objcopy left debug info in {}", stripped.display());
    }
    Ok(Split {
        stripped,
        debug_file,
        build_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ELF with DWARF and a build-id, built by the C compiler the
    /// Rust linker already needs.
    fn fixture(dir: &Path) -> PathBuf {
        let src = dir.join("f.c");
        std::fs::write(
            &src,
            "int answer(void) { return 42; }\nint main(void) { return answer() - 42; }\n",
        )
        .unwrap();
        let bin = dir.join("f");
        run(Command::new("cc")
            .args(["-g", "-O0", "-Wl,--build-id", "-o"])
            .arg(&bin)
            .arg(&src))
        .unwrap();
        bin
    }

    #[test]
    fn the_binary_loses_its_debug_info_to_a_build_id_file_beside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, work) = (tmp.path().join("root"), tmp.path().join("work"));
        std::fs::create_dir_all(&work).unwrap();
        let bin = fixture(tmp.path());
        // Positive control: the input carries what is moved.
        assert!(sections(&bin).unwrap().contains(&".debug_info".into()));
        let s = split(&bin, &root, &work).unwrap();

        let installed = sections(&s.stripped).unwrap();
        assert!(
            !installed.iter().any(|n| n.starts_with(".debug_")),
            "{installed:?}"
        );
        assert!(
            installed.contains(&".gnu_debuglink".into()),
            "{installed:?}"
        );
        assert!(
            installed.contains(&".symtab".into()),
            "names stay for backtraces"
        );
        assert!(Command::new(&s.stripped).status().unwrap().success());

        // The debug file sits where build-id lookups go and is this binary's.
        assert_eq!(s.debug_file, debug_path(&root, &s.build_id));
        let rel = s.debug_file.strip_prefix(&root).unwrap().to_str().unwrap();
        let id = &s.build_id;
        assert_eq!(
            rel,
            format!("usr/lib/debug/.build-id/{}/{}.debug", &id[..2], &id[2..])
        );
        assert!(
            sections(&s.debug_file)
                .unwrap()
                .contains(&".debug_info".into())
        );
        assert_eq!(build_id(&s.debug_file).unwrap(), *id);
        assert_eq!(build_id(&s.stripped).unwrap(), *id);
        // The debuglink names the debug file (and carries its CRC).
        let dumped = tmp.path().join("debuglink");
        run(Command::new("objcopy")
            .arg(format!(
                "--dump-section=.gnu_debuglink={}",
                dumped.display()
            ))
            .arg(&s.stripped)
            .arg(tmp.path().join("scratch")))
        .unwrap();
        let link = std::fs::read(&dumped).unwrap();
        let name = link.split(|b| *b == 0).next().unwrap();
        assert_eq!(name, s.debug_file.file_name().unwrap().as_encoded_bytes());
        let mode = std::fs::metadata(&s.debug_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn a_binary_without_a_build_id_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("f.c");
        std::fs::write(&src, "int main(void) { return 0; }\n").unwrap();
        let bin = tmp.path().join("f");
        run(Command::new("cc")
            .args(["-g", "-Wl,--build-id=none", "-o"])
            .arg(&bin)
            .arg(&src))
        .unwrap();
        let e = split(&bin, &tmp.path().join("root"), tmp.path())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no GNU build-id"), "{e}");
        assert!(!tmp.path().join("root/usr/lib/debug").exists());
    }
}
