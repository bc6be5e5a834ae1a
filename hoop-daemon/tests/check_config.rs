//! `hoop check-config`: every kind of mistake names the file, the line and
//! column, and the key, with a hint; a good file says ok.
use std::process::Command;

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("hoop.toml");
    std::fs::write(&f, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hoop"))
        .arg("check-config")
        .arg(&f)
        .env_remove("HOOP_CONFIG")
        .output()
        .unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        all.contains(f.to_str().unwrap()),
        "the file is not named: {all}"
    );
    (out.status.success(), all)
}

#[test]
fn each_kind_of_error_is_located() {
    let conn =
        "[[connection]]\nname = \"p\"\nhosts = [\"api.partner.example\"]\nallow = [\"ci:*\"]\n";
    let cases: Vec<(String, &str, &str)> = vec![
        ("[capture\n".into(), "line 1", "column"),
        ("[capture]\nlisten_prot = 1\n".into(), "line 2", "listen_prot"),
        ("[capture]\nlisten_port = \"x\"\n".into(), "line 2", "listen_port"),
        ("[capture]\nlisten_port = 0\n".into(), "line 2", "capture.listen_port"),
        ("[metrics]\nlisten = \"0.0.0.0:9108\"\n".into(), "line 2", "metrics.listen"),
        ("[audit]\nretain = \"30x\"\n".into(), "line 2", "audit.retain"),
        (
            conn.replace("api.partner.example", "api.*.example"),
            "line 3",
            "connection[0].hosts[0]",
        ),
        (conn.replace("ci:*", "ci:[x"), "line 4", "connection[0].allow[0]"),
        (
            format!("{conn}credential = {{ secret = {{ file = \"/nonexistent/k\" }} }}\n"),
            "line 5",
            "connection[0].credential.secret",
        ),
        (
            format!("{conn}credential = {{ query = \"k\", basic_user = \"u\", secret = {{ env = \"X\" }} }}\n"),
            "line 5",
            "connection[0].credential",
        ),
        (
            "[[identity.oidc]]\nname = \"ci\"\nissuer = \"https://i.example\"\naudience = \"hoop\"\nalgorithms = [\"none\"]\n".into(),
            "line 5",
            "identity.oidc[0].algorithms[0]",
        ),
        (
            "[[identity.oidc]]\nname = \"ci\"\nissuer = \"http://i.example\"\naudience = \"hoop\"\n".into(),
            "line 3",
            "identity.oidc[0].issuer",
        ),
        (
            "[[identity.static]]\ncgroup = \"/abs\"\nname = \"x\"\n".into(),
            "line 2",
            "identity.static[0].cgroup",
        ),
    ];
    for (text, line, key) in &cases {
        let (ok, out) = check(text);
        assert!(!ok, "accepted:\n{text}");
        assert!(out.contains(line) && out.contains(key), "{key}: {out}");
    }
    let (ok, out) = check(conn);
    assert!(ok && out.contains("ok"), "{out}");
}
