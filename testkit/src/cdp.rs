//! Headless Chromium driven over the DevTools protocol (CDP): JSON commands
//! and events over one WebSocket. Only what the seed scenario needs: open
//! a page, evaluate script (awaiting promises), and keep every network
//! event so a test can read each response's headers and body as the
//! browser got them.
//!
//! Synchronous on purpose: tests start a command (`send`), do something
//! else (approve a held request), then collect its answer (`wait`).
use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

/// Flags for a quiet, headless browser: no first-run UI, no background
/// traffic of its own, no sandbox (it runs as an unprivileged user in a
/// hoop job; the gateway, not the sandbox, is what is under test).
pub const HEADLESS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=OptimizationHints,MediaRouter",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
];

/// The longest any one command or awaited event may take (a held request
/// waits for a human: the tests approve within seconds).
const DEADLINE: Duration = Duration::from_secs(120);

pub struct Browser {
    child: Child,
    ws: WebSocket<TcpStream>,
    session: String,
    next: u64,
    /// Every event received so far, in order.
    pub events: Vec<Value>,
    /// Chromium's output.
    pub log: PathBuf,
}

impl Browser {
    /// Starts `cmd` (which must end by running chromium: `hoop run -- …
    /// chromium`) with [`HEADLESS`], `args` and a profile in `profile`, and
    /// attaches to its first tab.
    pub fn launch(mut cmd: Command, args: &[String], profile: &Path) -> Result<Self> {
        std::fs::create_dir_all(profile)?;
        let port_file = profile.join("DevToolsActivePort");
        let _ = std::fs::remove_file(&port_file);
        let log = profile.with_extension("log");
        let out = std::fs::File::create(&log)?;
        let child = cmd
            .args(HEADLESS)
            .args(args)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting chromium")?;
        let mut b = Launching { child: Some(child) };
        let t = Instant::now();
        // Chromium writes "PORT\nPATH" once DevTools listens.
        let (port, path) = loop {
            if let Ok(s) = std::fs::read_to_string(&port_file)
                && let Some((port, path)) = s.split_once('\n')
                && !path.trim().is_empty()
            {
                break (port.trim().to_string(), path.trim().to_string());
            }
            if let Some(s) = b.child().try_wait()? {
                bail!(
                    "chromium exited ({s}) before DevTools listened:\n{}",
                    tail(&log)
                );
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!(
                    "chromium did not open DevTools within 30 s:\n{}",
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stream = TcpStream::connect(format!("127.0.0.1:{port}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(90)))?;
        let (ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}{path}"), stream)
            .map_err(|e| anyhow::anyhow!("DevTools handshake: {e}"))?;
        let mut b = Self {
            child: b.child.take().unwrap(),
            ws,
            session: String::new(),
            next: 0,
            events: Vec::new(),
            log,
        };
        let targets = b.browser_call("Target.getTargets", json!({}))?;
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["targetId"].as_str())
            .context("chromium has no tab")?
            .to_string();
        let attached = b.browser_call(
            "Target.attachToTarget",
            json!({ "targetId": page, "flatten": true }),
        )?;
        b.session = attached["sessionId"]
            .as_str()
            .context("no DevTools session")?
            .to_string();
        for domain in ["Page.enable", "Network.enable", "Runtime.enable"] {
            b.call(domain, json!({}))?;
        }
        Ok(b)
    }

    /// Chromium's browser process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every Chromium process (`{"id": pid, "type": "browser"|"renderer"|…}`).
    pub fn processes(&mut self) -> Result<Vec<Value>> {
        let v = self.browser_call("SystemInfo.getProcessInfo", json!({}))?;
        Ok(v["processInfo"].as_array().cloned().unwrap_or_default())
    }

    /// Sends a command to the tab; its answer comes with [`Self::wait`].
    pub fn send(&mut self, method: &str, params: Value) -> Result<u64> {
        let session = self.session.clone();
        self.send_to(Some(&session), method, params)
    }

    fn send_to(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<u64> {
        self.next += 1;
        let mut msg = json!({ "id": self.next, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        self.ws.send(Message::text(msg.to_string()))?;
        Ok(self.next)
    }

    /// The answer to command `id`; events that arrive meanwhile are kept.
    pub fn wait(&mut self, id: u64) -> Result<Value> {
        let t = Instant::now();
        loop {
            if t.elapsed() > DEADLINE {
                bail!("no answer to DevTools command {id} within {DEADLINE:?}");
            }
            let v = self.read()?;
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    bail!("DevTools error: {e}");
                }
                return Ok(v["result"].clone());
            }
        }
    }

    fn read(&mut self) -> Result<Value> {
        loop {
            match self.ws.read().context("reading from DevTools")? {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t)?;
                    if v.get("method").is_some() {
                        self.events.push(v.clone());
                    }
                    return Ok(v);
                }
                Message::Close(_) => bail!("DevTools closed the connection"),
                _ => continue,
            }
        }
    }

    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.send(method, params)?;
        self.wait(id)
    }

    fn browser_call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.send_to(None, method, params)?;
        self.wait(id)
    }

    /// Waits for an event `method` after the first `after` events.
    pub fn wait_event(&mut self, method: &str, after: usize) -> Result<Value> {
        let t = Instant::now();
        loop {
            if t.elapsed() > DEADLINE {
                bail!("no {method} event within {DEADLINE:?}");
            }
            if let Some(e) = self.events[after..].iter().find(|e| e["method"] == method) {
                return Ok(e.clone());
            }
            self.read()?;
        }
    }

    /// Loads `url` in the tab and waits for its load event.
    pub fn open(&mut self, url: &str) -> Result<()> {
        let seen = self.events.len();
        let r = self.call("Page.navigate", json!({ "url": url }))?;
        if let Some(e) = r.get("errorText") {
            bail!("loading {url}: {e}");
        }
        self.wait_event("Page.loadEventFired", seen)?;
        Ok(())
    }

    /// Starts evaluating `expr` in the page (a promise is awaited); its
    /// value comes with [`Self::value`].
    pub fn start(&mut self, expr: &str) -> Result<u64> {
        self.send(
            "Runtime.evaluate",
            json!({ "expression": expr, "awaitPromise": true, "returnByValue": true }),
        )
    }

    /// The value of an evaluation started with [`Self::start`].
    pub fn value(&mut self, id: u64) -> Result<Value> {
        let r = self.wait(id)?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("script threw: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Evaluates `expr` in the page and returns its value.
    pub fn eval(&mut self, expr: &str) -> Result<Value> {
        let id = self.start(expr)?;
        self.value(id)
    }

    /// Polls `cond` (a JS expression) in the page until it is true; the
    /// error names where the page was and its DOM.
    pub fn wait_js(&mut self, cond: &str, timeout: Duration) -> Result<()> {
        let t = Instant::now();
        loop {
            if let Ok(v) = self.eval(&format!("!!({cond})"))
                && v == json!(true)
            {
                return Ok(());
            }
            if t.elapsed() > timeout {
                let url = self.eval("location.href").unwrap_or_default();
                let dom = self.dom().unwrap_or_default();
                bail!("{cond}: not true within {timeout:?} (at {url})\n{dom}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves what the page shows as a PNG, `width` × `height` CSS pixels.
    pub fn screenshot(&mut self, path: &Path, width: u32, height: u32) -> Result<()> {
        use base64::Engine;
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )?;
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().context("no screenshot data")?)?;
        if !png.starts_with(b"\x89PNG") {
            bail!("the screenshot is not a PNG");
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// The page's DOM as HTML.
    pub fn dom(&mut self) -> Result<String> {
        Ok(self
            .eval("document.documentElement.outerHTML")?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Every response the browser received: URL, status, the headers the
    /// page saw and the raw ones off the wire, and the body (for those that
    /// finished loading; None if Chromium no longer has it).
    pub fn responses(&mut self) -> Result<Vec<Response>> {
        self.responses_since(0)
    }

    /// Like [`Self::responses`], for those after the first `after` events
    /// (Chromium may drop a page's bodies once another page loads: read
    /// them before navigating).
    pub fn responses_since(&mut self, after: usize) -> Result<Vec<Response>> {
        let events = self.events.clone();
        let mut out = Vec::new();
        for e in events[after..]
            .iter()
            .filter(|e| e["method"] == "Network.responseReceived")
        {
            let p = &e["params"];
            let id = p["requestId"].clone();
            let raw = events
                .iter()
                .filter(|e| {
                    e["method"] == "Network.responseReceivedExtraInfo"
                        && e["params"]["requestId"] == id
                })
                .map(|e| e["params"]["headers"].clone())
                .collect();
            let finished = events.iter().any(|e| {
                e["method"] == "Network.loadingFinished" && e["params"]["requestId"] == id
            });
            let body = if finished {
                match self.call("Network.getResponseBody", json!({ "requestId": id })) {
                    Ok(b) if b["base64Encoded"] == true => {
                        use base64::Engine;
                        let raw = base64::engine::general_purpose::STANDARD
                            .decode(b["body"].as_str().unwrap_or_default())
                            .unwrap_or_default();
                        Some(String::from_utf8_lossy(&raw).into_owned())
                    }
                    Ok(b) => Some(b["body"].as_str().unwrap_or_default().to_string()),
                    Err(_) => None,
                }
            } else {
                None
            };
            out.push(Response {
                url: p["response"]["url"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                status: p["response"]["status"].as_u64().unwrap_or_default() as u16,
                headers: p["response"]["headers"].clone(),
                raw_headers: raw,
                body,
            });
        }
        Ok(out)
    }

    /// The status and headers of the last response to a URL starting with
    /// `prefix`, without its body.
    pub fn response_head(&self, prefix: &str) -> Option<(u16, Value)> {
        self.events
            .iter()
            .rev()
            .filter(|e| e["method"] == "Network.responseReceived")
            .map(|e| &e["params"]["response"])
            .find(|r| r["url"].as_str().is_some_and(|u| u.starts_with(prefix)))
            .map(|r| {
                (
                    r["status"].as_u64().unwrap_or_default() as u16,
                    r["headers"].clone(),
                )
            })
    }

    /// Network requests that failed, with Chromium's error text.
    pub fn failures(&self) -> Vec<(String, String)> {
        let url_of = |id: &Value| {
            self.events
                .iter()
                .find(|e| {
                    e["method"] == "Network.requestWillBeSent" && e["params"]["requestId"] == *id
                })
                .and_then(|e| e["params"]["request"]["url"].as_str())
                .unwrap_or_default()
                .to_string()
        };
        self.events
            .iter()
            .filter(|e| e["method"] == "Network.loadingFailed")
            .map(|e| {
                (
                    url_of(&e["params"]["requestId"]),
                    e["params"]["errorText"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }

    /// Closes the browser (gracefully, then by force, with its children).
    pub fn close(mut self) {
        let _ = self.browser_call("Browser.close", json!({}));
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
    }
}

/// Kills a browser and every process it started (renderers, zygotes), and
/// waits for them: a job's cgroup must be empty before it can go. Each
/// process is stopped before its children are listed, so none can start
/// another behind the scan's back; then all are killed.
fn kill_tree(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        // Reaped: its pid may be someone else's by now.
        return;
    }
    let mut all = vec![child.id()];
    let mut i = 0;
    while i < all.len() {
        signal("STOP", all[i]);
        all.extend(children_of(all[i]));
        i += 1;
    }
    for pid in &all[1..] {
        signal("KILL", *pid);
    }
    let _ = child.kill();
    let _ = child.wait();
    let t = Instant::now();
    while all[1..]
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
        && t.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// kill(1): the testkit has no unsafe code.
fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // The command name may hold spaces: fields follow its ')'.
                    let rest = s.get(s.rfind(')')? + 2..)?;
                    rest.split(' ').nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// One response as the browser got it.
#[derive(Debug, Clone)]
pub struct Response {
    pub url: String,
    pub status: u16,
    pub headers: Value,
    pub raw_headers: Vec<Value>,
    pub body: Option<String>,
}

/// Kills the child if launching fails half-way.
struct Launching {
    child: Option<Child>,
}

impl Launching {
    fn child(&mut self) -> &mut Child {
        self.child.as_mut().unwrap()
    }
}

impl Drop for Launching {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            kill_tree(c);
        }
    }
}

fn tail(log: &Path) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
