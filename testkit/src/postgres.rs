//! A real PostgreSQL server for the fleet's tests: Debian's `postgresql`
//! binaries (`initdb`, `pg_ctl`) on a scratch directory, run as the
//! package's `postgres` user, listening on 127.0.0.1 only, with TLS from a
//! test CA. The role `hoop` (a password) owns the database `hoop`.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::TestCa;

pub const PASSWORD: &str = "hoop-fleet-test-password";

pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    /// The CA that signed the server's certificate (PEM file).
    pub ca_file: PathBuf,
}

/// Debian's server binaries (`/usr/lib/postgresql/<major>/bin`).
fn bin_dir() -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install Debian's postgresql package")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

fn as_postgres(bin: &Path, tool: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
    c
}

fn run(c: &mut Command) -> Result<String> {
    let out = c.output().with_context(|| format!("starting {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Postgres {
    /// A new cluster under `dir` (which must not exist), started.
    pub fn start(dir: &Path) -> Result<Self> {
        let bin = bin_dir()?;
        std::fs::create_dir_all(dir)?;
        let data = dir.join("data");
        let ca = TestCa::new("hoop test PostgreSQL CA");
        let (cert, key) = ca.leaf_pem(&["127.0.0.1", "localhost"]);
        std::fs::write(dir.join("server.crt"), cert)?;
        std::fs::write(dir.join("server.key"), key)?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca.cert_pem)?;
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir))?;
        run(Command::new("chmod").arg("0700").arg(dir))?;
        run(Command::new("chmod")
            .arg("0600")
            .arg(dir.join("server.key")))?;
        run(Command::new("chmod").arg("0644").arg(&ca_file))?;
        let pw = dir.join("pw");
        std::fs::write(&pw, PASSWORD)?;
        run(Command::new("chown").arg("postgres").arg(&pw))?;
        run(as_postgres(&bin, "initdb")
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pw.display())))?;
        let port = free_port();
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{d}'\n\
             ssl = on\nssl_cert_file = '{d}/server.crt'\nssl_key_file = '{d}/server.key'\n\
             fsync = off\nlog_min_messages = warning\n",
            d = dir.display()
        );
        let mut pg_conf = std::fs::read_to_string(data.join("postgresql.conf"))?;
        pg_conf.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), pg_conf)?;
        let pg = Self {
            dir: dir.to_path_buf(),
            port,
            bin,
            ca_file,
        };
        pg.start_again()?;
        pg.psql_in(
            "postgres",
            &format!("CREATE ROLE hoop LOGIN PASSWORD '{PASSWORD}'"),
        )?;
        pg.psql_in("postgres", "CREATE DATABASE hoop OWNER hoop")?;
        Ok(pg)
    }

    /// Starts the server (after [`Postgres::stop`]) and waits until it
    /// answers.
    pub fn start_again(&self) -> Result<()> {
        run(as_postgres(&self.bin, "pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .arg("start"))?;
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if t.elapsed() > Duration::from_secs(30) {
                bail!("PostgreSQL did not listen on {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the server at once (connections are cut, as by a lost link).
    pub fn stop(&self) -> Result<()> {
        run(as_postgres(&self.bin, "pg_ctl")
            .args(["-w", "-D"])
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "stop"]))?;
        Ok(())
    }

    /// `postgres://hoop:…@127.0.0.1:PORT/hoop`, TLS verified against
    /// [`Postgres::ca_file`] (hoop's default sslmode).
    pub fn url(&self) -> String {
        format!("postgres://hoop:{PASSWORD}@127.0.0.1:{}/hoop", self.port)
    }

    /// Runs SQL in the `hoop` database as the superuser; its output
    /// (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> Result<String> {
        self.psql_in("hoop", sql)
    }

    fn psql_in(&self, db: &str, sql: &str) -> Result<String> {
        run(as_postgres(&self.bin, "psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ]))
    }

    /// The server's log, for messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl")
            .args(["-D"])
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
