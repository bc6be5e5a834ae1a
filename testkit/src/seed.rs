//! The seed scenario's partner: "Acme Payouts", a console page and the API
//! behind it, served by [`crate::Origin`] next to its other routes. The
//! page is what a scraping job's headless browser loads; its script exposes
//! one function per step (`window.console_app.customers()`, …) so that a
//! DevTools driver (the end-to-end test, the demo) can run each step and
//! read what the browser saw.
//!
//! | route | answers |
//! |---|---|
//! | `GET /console` | the console page |
//! | `GET /v1/prod/customers` | customers with e-mail and card numbers |
//! | `GET /v1/whoami` | echoes the request's headers, Authorization included |
//! | `DELETE /v1/prod/customers/N` | 204 (a real delete; the gateway must stop it) |
//! | `POST /v1/prod/payouts` | 201 with a payout id |
//!
//! Every answer offers HTTP/3 (`alt-svc: h3=":443"`), as big APIs do, so
//! that a browser with QUIC enabled would try UDP.
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderValue, Method, StatusCode, header};

/// The customers the API returns: card numbers the gateway must mask.
pub const CUSTOMERS_JSON: &str = r#"{"data":[{"id":41,"name":"Ann Lee","email":"ann.lee@example.com","payment":{"card_number":"4111111111111111","brand":"visa"}},{"id":42,"name":"Raj Patel","email":"raj@example.com","payment":{"card_number":"5500000000000004","brand":"mastercard"}}],"next":null}"#;

/// Full card numbers in [`CUSTOMERS_JSON`], for tests to look for.
pub const CARD_NUMBERS: [&str; 2] = ["4111111111111111", "5500000000000004"];

static PAYOUTS: AtomicUsize = AtomicUsize::new(0);

/// The scenario's answer for a request, or None if the route isn't one of
/// the scenario's.
pub(crate) fn route(
    method: &Method,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Option<(StatusCode, &'static str, String)> {
    const JSON: &str = "application/json";
    Some(match (method, path) {
        (&Method::GET, "/console") => (StatusCode::OK, "text/html", CONSOLE.to_string()),
        (&Method::GET, "/v1/prod/customers") => (StatusCode::OK, JSON, CUSTOMERS_JSON.into()),
        (&Method::GET, "/v1/whoami") => {
            let h: serde_json::Map<String, serde_json::Value> = headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            let j = serde_json::json!({ "you_sent": h });
            (StatusCode::OK, JSON, j.to_string())
        }
        (&Method::DELETE, p) if p.starts_with("/v1/prod/customers/") => {
            (StatusCode::NO_CONTENT, JSON, String::new())
        }
        (&Method::POST, "/v1/prod/payouts") => {
            let n = PAYOUTS.fetch_add(1, Ordering::SeqCst) + 1;
            let req: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let j = serde_json::json!({ "payout": format!("po_{n:04}"), "status": "queued", "amount": req["amount"] });
            (StatusCode::CREATED, JSON, j.to_string())
        }
        _ => return None,
    })
}

/// Headers every scenario answer carries.
pub(crate) fn decorate(h: &mut http::HeaderMap, content_type: &'static str) {
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::ALT_SVC,
        HeaderValue::from_static("h3=\":443\"; ma=86400"),
    );
}

const CONSOLE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Acme Payouts: partner console</title>
<style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em 1em;text-align:left}</style>
</head><body>
<h1>Acme Payouts: partner console</h1>
<h2>Customers</h2>
<table><thead><tr><th>id</th><th>name</th><th>e-mail</th><th>card</th></tr></thead>
<tbody id="customers"></tbody></table>
<h2>What the API received</h2>
<pre id="whoami"></pre>
<h2>Activity</h2>
<ol id="activity"></ol>
<script>
async function call(method, path, body) {
  const init = { method };
  if (body !== undefined) {
    init.headers = { 'content-type': 'application/json' };
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  const headers = {};
  r.headers.forEach((v, k) => { headers[k] = v; });
  return { status: r.status, reason: r.headers.get('x-hoop-reason'),
           rule: r.headers.get('x-hoop-rule'), headers, text };
}
function activity(line) {
  const li = document.createElement('li');
  li.textContent = line;
  document.getElementById('activity').appendChild(li);
}
function outcome(what, r) {
  activity(what + ': ' + r.status + (r.reason ? ' (' + r.reason + (r.rule ? ', rule ' + r.rule : '') + ')' : '') +
           (r.text ? ' ' + r.text.slice(0, 200) : ''));
  return r;
}
window.console_app = {
  async customers() {
    const r = await call('GET', '/v1/prod/customers');
    const body = document.getElementById('customers');
    body.textContent = '';
    for (const c of JSON.parse(r.text).data) {
      const tr = document.createElement('tr');
      for (const v of [c.id, c.name, c.email, c.payment.card_number]) {
        const td = document.createElement('td');
        td.textContent = v;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    return outcome('GET /v1/prod/customers', r);
  },
  async whoami() {
    const r = await call('GET', '/v1/whoami');
    document.getElementById('whoami').textContent = r.text;
    return outcome('GET /v1/whoami', r);
  },
  async remove(id) {
    return outcome('DELETE /v1/prod/customers/' + id, await call('DELETE', '/v1/prod/customers/' + id));
  },
  async payout(amount) {
    return outcome('POST /v1/prod/payouts', await call('POST', '/v1/prod/payouts', { amount, currency: 'EUR' }));
  },
  // Anything else the page could try, e.g. another origin or an address.
  async reach(url) {
    try {
      const r = await fetch(url, { mode: 'no-cors' });
      return outcome(url, { status: r.status, type: r.type, text: '' });
    } catch (e) {
      activity(url + ': failed, ' + e);
      return { error: String(e) };
    }
  },
};
</script>
</body></html>
"#;

/// A second host the learn page loads its font and image from: nobody
/// configured it.
pub const ASSETS_HOST: &str = "assets.cdn.example";

/// A 4×4 PNG, the learn page's image.
pub const LOGO_PNG: [u8; 73] = [
    137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 4, 0, 0, 0, 4, 8, 2, 0,
    0, 0, 38, 147, 9, 41, 0, 0, 0, 16, 73, 68, 65, 84, 120, 156, 99, 184, 96, 96, 0, 71, 12, 196,
    113, 0, 248, 67, 19, 1, 174, 232, 233, 27, 0, 0, 0, 0, 73, 69, 78, 68, 174, 66, 96, 130,
];

/// A real font for the learn page (Debian's fonts-dejavu-core).
pub const FONT_FILE: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The learn suite's page on the partner: its API, and a font and an
/// image from [`ASSETS_HOST`]. `learn.loaded()` says how each went.
pub const LEARN: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Acme Payouts: learn</title>
<style>@font-face{font-family:Learn;src:url(https://assets.cdn.example/assets/font.ttf)}
body{font-family:Learn,sans-serif;margin:2em}</style>
</head><body>
<h1>Acme Payouts</h1>
<img id="logo" src="https://assets.cdn.example/assets/logo.png" alt="Acme" width="16" height="16">
<p id="status">loading</p>
<script>
window.learn = {
  async loaded() {
    const img = document.getElementById('logo');
    if (!img.complete) {
      await new Promise(r => { img.onload = r; img.onerror = r; });
    }
    const font = new FontFace('LearnCheck', 'url(https://assets.cdn.example/assets/font.ttf)');
    let f;
    try { await font.load(); f = 'loaded'; } catch (e) { f = 'error: ' + e; }
    const r = await fetch('/v1/prod/customers');
    const out = { font: f, image: img.naturalWidth, api: r.status,
                  reason: r.headers.get('x-hoop-reason') };
    document.getElementById('status').textContent = JSON.stringify(out);
    return out;
  },
};
</script>
</body></html>
"#;

/// The partner's name, as jobs use it. `.example` is reserved: it never
/// resolves on a real network; browsers map it to loopback by flag.
pub const PARTNER_HOST: &str = "api.partner.example";
/// A second name for the same partner that the browser is told to reach
/// over QUIC only.
pub const QUIC_HOST: &str = "quic.partner.example";
/// The OIDC subject of the scenario's CI job.
pub const JOB_SUBJECT: &str = "repo:acme/scraper:ref:refs/heads/main";

/// Where the scenario's policy finds its parts.
pub struct PolicyParts<'a> {
    pub issuer_url: &'a str,
    pub issuer_ca: &'a std::path::Path,
    pub partner_ca: &'a std::path::Path,
    pub secret_file: &'a std::path::Path,
}

/// The scenario's policy: CI jobs (OIDC) may use the partner API with a
/// credential they never hold; deletes on production are refused, card
/// numbers and e-mail addresses masked, and payouts held for root.
pub fn policy(p: &PolicyParts) -> String {
    format!(
        r#"[[identity.oidc]]
name = "ci"
issuer = "{issuer}"
audience = "{aud}"
algorithms = ["ES256"]
ca_files = ["{issuer_ca}"]

[[connection]]
name = "partner-api"
hosts = ["{host}"]
allow = ["ci:*"]
upstream_ca_files = ["{partner_ca}"]
credential = {{ header = "authorization", format = "Bearer {{secret}}", secret = {{ file = "{secret}" }} }}

[[connection.deny]]
name = "no-prod-delete"
method = "DELETE"
path = "/v1/prod/**"
message = "DELETE on production is not allowed"

[connection.mask]
json = ["$..card_number"]
detectors = ["credit_card", "email"]
keep_last = 4

[[connection.approve]]
name = "prod-payouts"
method = "POST"
path = "/v1/prod/payouts"
approvers = ["uid:0"]
timeout = "5m"
"#,
        issuer = p.issuer_url,
        aud = crate::oidc::AUDIENCE,
        issuer_ca = p.issuer_ca.display(),
        host = PARTNER_HOST,
        partner_ca = p.partner_ca.display(),
        secret = p.secret_file.display(),
    )
}

/// Chromium flags for the scenario: the partner's names mapped to `ip`,
/// and QUIC on, forced for [`QUIC_HOST`].
pub fn chromium_args(ip: &str) -> Vec<String> {
    vec![
        format!("--host-resolver-rules=MAP {PARTNER_HOST} {ip}, MAP {QUIC_HOST} {ip}"),
        "--enable-quic".into(),
        format!("--origin-to-force-quic-on={QUIC_HOST}:443"),
    ]
}

/// The scenario's job: hoop's binary and config, the CI token, the
/// browser's home, and the partner's address.
pub struct Job<'a> {
    pub hoop: &'a std::path::Path,
    pub config: &'a std::path::Path,
    pub token: &'a std::path::Path,
    pub home: &'a std::path::Path,
    pub partner_ip: &'a str,
}

/// Starts the scenario's browser as nobody: `hoop run --nss=private
/// --token-file TOKEN -- chromium` with [`chromium_args`] and a profile
/// under `home` (owned by nobody). No certificate flag and no NSS step of
/// the caller's: the job's own database trusts hoop's CA.
pub fn launch_browser(j: &Job) -> anyhow::Result<crate::cdp::Browser> {
    launch_browser_with(j, &chromium_args(j.partner_ip))
}

/// [`launch_browser`] with these Chromium flags instead of the scenario's.
pub fn launch_browser_with(j: &Job, args: &[String]) -> anyhow::Result<crate::cdp::Browser> {
    use anyhow::{Context, bail};
    use std::process::Command;
    std::fs::create_dir_all(j.home.join("profile"))?;
    let out = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(j.home)
        .output()
        .context("chown")?;
    if !out.status.success() {
        bail!(
            "chown {}: {}",
            j.home.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut job = Command::new("setpriv");
    job.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(j.hoop)
        .arg("--config")
        .arg(j.config)
        .arg("run")
        .arg("--nss=private")
        .arg("--token-file")
        .arg(j.token)
        .args(["--", "chromium"])
        .env("HOME", j.home);
    crate::cdp::Browser::launch(job, args, &j.home.join("profile"))
}
