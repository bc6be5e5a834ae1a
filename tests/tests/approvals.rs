//! Per-request approval end to end: a job (running as `nobody`) makes a
//! risky request, which waits; approvers are notified by webhook; the
//! job's own uid can't approve it; root approves (with `--for`, so the same
//! job's next matching request goes through), denies, or lets it expire.
use std::{
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use hoop_testkit::{Origin, OriginOpts, TestCa};
use hoop_tests::{TestEnv, Value, eventually, webhook};

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");

struct Setup {
    env: TestEnv,
    origin: Origin,
    ca: std::path::PathBuf,
    hooks: Arc<Mutex<Vec<String>>>,
}

fn setup() -> Setup {
    let up_ca = TestCa::default();
    let dir = tempfile::tempdir().unwrap().keep();
    let up_ca_file = dir.join("upstream-ca.pem");
    std::fs::write(&up_ca_file, &up_ca.cert_pem).unwrap();
    let (hook, hooks) = webhook();
    let policy = format!(
        r#"[approvals]
webhook = "{hook}"

[[identity.static]]
cgroup = "{{cgroup}}/**"
name = "test:local"

[[connection]]
name = "partner"
hosts = ["api.partner.test"]
allow = ["test:*"]
upstream_ca_files = ["{}"]

[[connection.approve]]
name = "prod-writes"
method = "POST"
path = "/echo"
approvers = ["uid:0", "uid:65534"]
timeout = "20s"

[[connection.approve]]
name = "slow"
method = "POST"
path = "/hello"
approvers = ["uid:0"]
timeout = "1s"
"#,
        up_ca_file.display()
    );
    // The control group is nogroup, so that jobs running as nobody can
    // use `hoop run`, and try to approve themselves.
    let mut env = TestEnv::custom(
        "approve",
        PROBE,
        "control_group = \"nogroup\"",
        "",
        "\"127.0.0.0/8\"",
        Some(&policy),
    );
    env.start_daemon();
    let origin = Origin::start_background(OriginOpts {
        tls: Some(up_ca.server_config(&["api.partner.test"], &[b"http/1.1"])),
        bind: Some("127.0.0.3:0".parse().unwrap()),
        also_v6: false,
    });
    // The hoop CA where nobody can read it.
    let ca = env.dir.path().join("hoop-ca.pem");
    std::fs::copy(env.hoop_ca(), &ca).unwrap();
    Setup {
        env,
        origin,
        ca,
        hooks,
    }
}

impl Setup {
    /// A job as nobody running `script` (sh), in the background.
    fn job(&self, script: &str) -> Child {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(hoop_tests::hoop_bin())
            .arg("--config")
            .arg(&self.env.config)
            .args(["run", "--", "sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn curl(&self, method: &str, path: &str) -> String {
        let port = self.origin.addr.port();
        format!(
            "curl -sS --max-time 30 --cacert {} --resolve api.partner.test:{port}:127.0.0.3 -X {method} \
             -d payload -w '\\n%{{http_code}}\\n' https://api.partner.test:{port}{path}",
            self.ca.display()
        )
    }

    /// `hoop approvals …` as root, or as nobody.
    fn approve_cmd(&self, nobody: bool, args: &[&str]) -> std::process::Output {
        let mut c = if nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(hoop_tests::hoop_bin())
                .arg("--config")
                .arg(&self.env.config);
            c
        } else {
            self.env.hoop()
        };
        c.arg("approvals").args(args).output().unwrap()
    }
}

fn finish(job: Child) -> String {
    let out = job.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn held_requests_wait_for_a_human_who_is_not_the_job() {
    let s = setup();
    let hits = s.origin.hits();

    // Job A: two matching requests. The first waits.
    let a = s.job(&format!(
        "{}; {}",
        s.curl("POST", "/echo"),
        s.curl("POST", "/echo")
    ));
    let id = s.env.wait_pending(0);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(s.origin.hits(), hits, "a held request reached the upstream");
    // The webhook told the approvers.
    assert!(
        eventually(Duration::from_secs(5), || s
            .hooks
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.contains(&id))),
        "no webhook for {id}: {:?}",
        s.hooks.lock().unwrap()
    );
    let hook: Value = serde_json::from_str(
        s.hooks
            .lock()
            .unwrap()
            .iter()
            .find(|h| h.contains(&id))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(hook["event"], "approval.pending");
    assert_eq!(hook["rule"], "prod-writes");
    assert_eq!(hook["identity"], "test:local");

    // The job's own uid (nobody, listed as an approver even) can't.
    let out = s.approve_cmd(true, &["approve", &id]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("can't approve itself"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Root approves, for a minute: the second request needs no approval.
    let out = s.approve_cmd(false, &["approve", &id, "--for", "1m"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = finish(a);
    assert_eq!(text.matches("\n200\n").count(), 2, "{text}");
    assert!(
        text.contains("payload"),
        "the upstream's answer reached the job: {text}"
    );
    assert_eq!(s.origin.hits(), hits + 2);
    let rows = s.env.approvals();
    assert_eq!(
        rows.len(),
        1,
        "the second request made a new approval: {rows:?}"
    );
    assert_eq!(rows[0]["status"], "approved");
    assert_eq!(rows[0]["decided_by"], "uid:0 (root)");

    // Job B: denied, with a reason the job reads; the upstream never sees it.
    let b = s.job(&s.curl("POST", "/echo"));
    let id = s.env.wait_pending(0);
    // `--pending` leaves out the decided one above.
    let out = s
        .env
        .hoop()
        .args(["approvals", "list", "--pending"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && listed.lines().filter(|l| !l.starts_with(' ')).count() == 1
            && listed.contains(&id)
            && listed.contains("    body sha256 "),
        "{listed}"
    );
    let out = s.approve_cmd(false, &["deny", &id, "--reason", "not during the freeze"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = finish(b);
    assert!(text.contains("\n403\n"), "{text}");
    assert!(text.contains("not during the freeze"), "{text}");
    assert_eq!(s.origin.hits(), hits + 2);

    // Job C: nobody decides; the request expires.
    let c = s.job(&s.curl("POST", "/hello"));
    let text = finish(c);
    assert!(
        text.contains("\n403\n") && text.contains("approval expired"),
        "{text}"
    );
    assert_eq!(s.origin.hits(), hits + 2);
    assert!(s.env.approvals().iter().any(|r| r["status"] == "expired"));
    s.env
        .wait_log(
            &["approval decided", "approver=uid:0 (root)"],
            Duration::from_secs(10),
        )
        .expect("decisions are audited with the approver");
}
