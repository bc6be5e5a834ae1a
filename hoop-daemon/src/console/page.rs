//! The console's HTML, rendered on the server: every value that came from
//! a job, a token or the provider is escaped here, once. No inline script
//! or style: the Content-Security-Policy allows only the console's own
//! files.
use std::fmt::Write;

use crate::approval::{Person, Row};

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

fn layout(title: &str, head: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/assets/console.css\">{head}</head>\
         <body>{body}</body></html>\n",
        esc(title)
    )
}

/// Not signed in: one link to the provider.
pub fn sign_in(message: Option<&str>) -> String {
    let note = message
        .map(|m| format!("<p role=\"alert\">{}</p>", esc(m)))
        .unwrap_or_default();
    layout(
        "hoop: sign in",
        "",
        &format!(
            "<main><h1>hoop approvals</h1>{note}<p>Held requests wait here for a \
             person to approve or deny them.</p><p><a id=\"sign-in\" href=\"/login\">\
             Sign in with your identity provider</a></p></main>"
        ),
    )
}

/// After the provider's redirect: a same-site navigation to the inbox, so
/// the browser sends the new SameSite=Strict cookie with it.
pub fn after_sign_in() -> String {
    layout(
        "hoop: signed in",
        "<meta http-equiv=\"refresh\" content=\"0;url=/\">",
        "<main><p>Signed in. <a href=\"/\">Continue to the held requests</a>.</p></main>",
    )
}

/// A page for a signed-in person: the header (who, the two views, sign
/// out) and `main`.
pub fn signed_in(title: &str, person: &Person, csrf: &str, main: &str) -> String {
    let who = person.email.as_deref().unwrap_or(&person.sub);
    layout(
        title,
        &format!(
            "<meta name=\"csrf\" content=\"{}\"><script src=\"/assets/console.js\" defer></script>",
            esc(csrf)
        ),
        &format!(
            "<header><h1>hoop approvals</h1><nav><a href=\"/\">Held requests</a> \
             <a href=\"/sessions\">Recorded sessions</a></nav><p>Signed in as \
             <strong id=\"who\">{}</strong> <form method=\"post\" action=\"/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Sign out</button>\
             </form></p></header><main>{main}</main>",
            esc(who),
            esc(csrf),
        ),
    )
}

/// `fleet_away`: why the fleet's shared queue can't be shown (this host
/// is in a fleet and its server is away).
pub fn inbox(person: &Person, csrf: &str, held: &[Row], fleet_away: Option<&str>) -> String {
    let mut items = String::new();
    for r in held {
        items.push_str(&held_item(r, csrf));
    }
    let away = fleet_away.map_or(String::new(), |e| {
        format!(
            "<p id=\"fleet-away\" role=\"status\">The fleet's shared queue is away ({}): \
             these are this host's held requests only.</p>",
            esc(e)
        )
    });
    signed_in(
        "hoop: held requests",
        person,
        csrf,
        &format!(
            "{away}<section aria-labelledby=\"h-held\"><h2 id=\"h-held\">Held requests</h2>\
             <p id=\"empty\"{}>Nothing is waiting for you.</p>\
             <ol id=\"inbox\" aria-live=\"polite\">{items}</ol></section>\
             <section aria-labelledby=\"h-done\"><h2 id=\"h-done\">Decided while you were here</h2>\
             <ol id=\"decided\" aria-live=\"polite\"></ol></section>",
            if held.is_empty() { "" } else { " hidden" },
        ),
    )
}

/// One held request, with its decision forms.
pub fn held_item(r: &Row, csrf: &str) -> String {
    let id = esc(&r.id);
    let csrf = esc(csrf);
    let mut facts = String::new();
    let mut fact = |k: &str, v: &str| {
        let _ = write!(facts, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v));
    };
    if let Some(h) = &r.host {
        fact("Held on host", h);
    }
    fact("Job", r.job.as_deref().unwrap_or("-"));
    fact("Identity", &r.identity);
    if let Some(a) = &r.actor {
        fact("Started by", a);
    }
    for (k, v) in &r.context.claims {
        if r.actor.as_ref() != Some(v)
            && [
                "repository",
                "ref",
                "actor",
                "workflow",
                "user_email",
                "user_login",
                "project_path",
                "pipeline_id",
                "run_id",
                "sub",
            ]
            .contains(&k.as_str())
        {
            fact(&format!("Token {k}"), v);
        }
    }
    if let Some(c) = &r.context.command {
        fact("Command", c);
    }
    fact("Connection", &r.connection);
    let rule = match &r.context.message {
        Some(m) => format!("{}: {m}", r.rule),
        None => r.rule.clone(),
    };
    fact("Rule", &rule);
    let body = match &r.body_sha256 {
        Some(h) => format!(
            "<div class=\"body-box\"><p>Body SHA-256 <code>{}</code> \
             <button type=\"button\" class=\"show-body\">Show the body</button> \
             <a class=\"body-link\" href=\"/approvals/{id}/body\">(as text)</a></p>\
             <pre class=\"body\" hidden></pre></div>",
            esc(h)
        ),
        None => "<p>No body.</p>".into(),
    };
    format!(
        "<li class=\"held\" id=\"a-{id}\" data-id=\"{id}\" data-created=\"{}\" data-expires=\"{}\">\
         <h3><span class=\"method\">{}</span> <span class=\"url\">{}</span></h3>\
         <dl>{facts}<dt>Waiting</dt><dd><span class=\"waited\"></span>; expires \
         <span class=\"expires\"></span></dd></dl>{body}\
         <form class=\"decide\" method=\"post\" action=\"/approvals/{id}/approve\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label>Approve <select name=\"for\"><option value=\"\">this request only</option>\
         <option value=\"600\">and the same for 10 minutes</option>\
         <option value=\"3600\">and the same for 1 hour</option></select></label>\
         <button class=\"approve\">Approve</button></form>\
         <form class=\"decide\" method=\"post\" action=\"/approvals/{id}/deny\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label>Reason <input name=\"reason\" required maxlength=\"500\"></label>\
         <button class=\"deny\">Deny</button></form>\
         <p class=\"status\" role=\"status\"></p></li>",
        r.created_ms,
        r.expires_ms,
        esc(&r.method),
        esc(&r.url),
    )
}

/// A decided request, as it moves out of the inbox.
pub fn decided_item(r: &Row) -> String {
    let by = r
        .decided_by
        .as_deref()
        .map(|b| format!(" by {}", esc(b)))
        .unwrap_or_default();
    let reason = r
        .reason
        .as_deref()
        .map(|x| format!(": {}", esc(x)))
        .unwrap_or_default();
    format!(
        "<li class=\"done\" id=\"d-{id}\" data-id=\"{id}\" data-status=\"{status}\">\
         <h3><span class=\"method\">{}</span> <span class=\"url\">{}</span></h3>\
         <p class=\"outcome-{status}\"><strong>{status}</strong>{by}{reason}</p></li>",
        esc(&r.method),
        esc(&r.url),
        id = esc(&r.id),
        status = esc(&r.status),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_values_are_escaped() {
        let row = Row {
            id: "ab".into(),
            created_ms: 1,
            expires_ms: 2,
            status: "pending".into(),
            job: Some("<script>alert(1)</script>".into()),
            identity: "ci:\"x\"".into(),
            connection: "c".into(),
            rule: "r".into(),
            method: "POST".into(),
            url: "https://a/?q=<img src=x onerror=alert(1)>".into(),
            decided_by: None,
            reason: None,
            body_sha256: Some("00".into()),
            body: Some("<b>".into()),
            actor: Some("'mallory'".into()),
            context: Default::default(),
            host: None,
        };
        let h = held_item(&row, "tok");
        assert!(!h.contains("<script>") && !h.contains("<img"), "{h}");
        assert!(
            h.contains("&lt;script&gt;")
                && h.contains("&quot;x&quot;")
                && h.contains("&#39;mallory&#39;")
        );
        // The body itself is not in the page: it is fetched (and recorded).
        assert!(!h.contains("&lt;b&gt;"), "{h}");
    }
}
