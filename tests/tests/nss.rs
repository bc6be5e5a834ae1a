//! `hoop ca install-nss --user U` runs as root, on a path U controls. A
//! user who plants a symlink anywhere under ~/.pki/nssdb must gain nothing:
//! before, root created the database through the link and chowned what it
//! found to the user. Now everything below the home happens as U.
use std::{
    os::unix::fs::{MetadataExt, PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use hoop_tests::TestEnv;

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");

/// A system account of the test's own, with a home it owns; removed on
/// drop.
struct TestUser {
    name: String,
    home: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestUser {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
        let home = dir.path().join("home");
        let name = format!("hoopnss{}", std::process::id());
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg("--home-dir")
            .arg(&home)
            .arg(&name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "useradd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let user = Self {
            name,
            home,
            _dir: dir,
        };
        user.fresh_home();
        user
    }

    fn uid(&self) -> u32 {
        let out = Command::new("id")
            .args(["-u", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// An empty home owned by the user.
    fn fresh_home(&self) {
        let _ = std::fs::remove_dir_all(&self.home);
        std::fs::create_dir(&self.home).unwrap();
        chown(&self.home, self.uid());
    }

    /// A directory in the home, the user's, as the user would make it.
    fn dir(&self, rel: &str) -> PathBuf {
        let p = self.home.join(rel);
        std::fs::create_dir(&p).unwrap();
        chown(&p, self.uid());
        p
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), None).unwrap();
}

/// Root's things a planted link points at: a directory and two files.
struct Victim {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    file: PathBuf,
}

impl Victim {
    fn new() -> Self {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("root-only");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o700)).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "root's").unwrap();
        std::fs::set_permissions(&file, PermissionsExt::from_mode(0o600)).unwrap();
        Self { _dir: d, dir, file }
    }

    /// Owner, mode and contents, as they were.
    fn untouched(&self, what: &str) {
        for p in [&self.dir, &self.file] {
            let m = std::fs::metadata(p).unwrap();
            assert_eq!(
                (m.uid(), m.gid()),
                (0, 0),
                "{what}: {} changed owner",
                p.display()
            );
        }
        assert_eq!(
            std::fs::metadata(&self.dir).unwrap().mode() & 0o7777,
            0o700,
            "{what}"
        );
        assert_eq!(
            std::fs::metadata(&self.file).unwrap().mode() & 0o7777,
            0o600,
            "{what}"
        );
        assert_eq!(
            std::fs::read_to_string(&self.file).unwrap(),
            "root's",
            "{what}"
        );
        let names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["secret"],
            "{what}: a database was made in root's directory"
        );
    }
}

#[test]
fn a_planted_symlink_at_any_level_leaves_roots_files_alone() {
    let mut env = TestEnv::new("nss", PROBE, "");
    env.start_daemon();
    let user = TestUser::new();
    let install = || {
        let out = env
            .hoop()
            .args(["ca", "install-nss", "--user", &user.name])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    // Positive control: a clean home gets a database of the user's own,
    // private, holding hoop's CA.
    let (ok, err) = install();
    assert!(ok, "{err}");
    let db = user.home.join(".pki/nssdb");
    let m = std::fs::metadata(&db).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (user.uid(), 0o700));
    assert_eq!(
        std::fs::metadata(db.join("cert9.db")).unwrap().uid(),
        user.uid()
    );
    let list = Command::new("certutil")
        .arg("-L")
        .arg("-d")
        .arg(format!("sql:{}", db.display()))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("hoop local CA"));

    // ~/.pki, ~/.pki/nssdb, and the database's files, each a link to root's.
    type Plant<'a> = Box<dyn Fn(&Victim) + 'a>;
    let plants: Vec<(&str, Plant)> = vec![
        (
            ".pki -> root's dir",
            Box::new(|v: &Victim| symlink(&v.dir, user.home.join(".pki")).unwrap()),
        ),
        (
            ".pki/nssdb -> root's dir",
            Box::new(|v: &Victim| {
                user.dir(".pki");
                symlink(&v.dir, user.home.join(".pki/nssdb")).unwrap();
            }),
        ),
        (
            ".pki/nssdb/cert9.db -> root's file",
            Box::new(|v: &Victim| {
                user.dir(".pki");
                user.dir(".pki/nssdb");
                for f in ["cert9.db", "key4.db", "pkcs11.txt"] {
                    symlink(&v.file, user.home.join(".pki/nssdb").join(f)).unwrap();
                }
            }),
        ),
    ];
    for (what, plant) in plants {
        user.fresh_home();
        let victim = Victim::new();
        plant(&victim);
        let (ok, err) = install();
        victim.untouched(what);
        // Refused as the user, with the reason; or done without root's
        // files (the user may well own a database through its own link).
        if !ok {
            assert!(err.contains(&format!("as {}", user.name)), "{what}: {err}");
        }
    }
}
