// hoop console: live inbox. The page works without this script (forms
// post and redirect back); with it, held requests appear and decisions
// show without reloading, for every signed-in approver at once.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf"]')?.content;
  const inbox = document.getElementById("inbox");
  const decided = document.getElementById("decided");
  if (!csrf || !inbox) return;

  const empty = () => {
    document.getElementById("empty").hidden = inbox.children.length > 0;
  };

  function ago(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
  }
  function tick() {
    const now = Date.now();
    for (const li of inbox.querySelectorAll("li[data-created]")) {
      li.querySelector(".waited").textContent = ago(now - Number(li.dataset.created));
      const left = Number(li.dataset.expires) - now;
      li.querySelector(".expires").textContent = left > 0 ? `in ${ago(left)}` : "now";
    }
  }
  setInterval(tick, 1000);

  function wire(li) {
    for (const form of li.querySelectorAll("form.decide")) {
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const status = li.querySelector(".status");
        const body = new URLSearchParams(new FormData(form));
        status.textContent = "Sending…";
        try {
          const r = await fetch(form.action, {
            method: "POST",
            headers: { "x-hoop-csrf": csrf, accept: "application/json" },
            body,
          });
          const j = await r.json();
          status.textContent = r.ok ? j.message : `Refused: ${j.error}`;
          li.dataset.refused = r.ok ? "" : j.reason;
        } catch (e) {
          status.textContent = `Not sent: ${e}`;
        }
      });
    }
    const show = li.querySelector("button.show-body");
    if (show) {
      show.addEventListener("click", async () => {
        const pre = li.querySelector("pre.body");
        const r = await fetch(`/approvals/${li.dataset.id}/body`, { headers: { accept: "text/plain" } });
        pre.textContent = await r.text();
        pre.hidden = false;
        show.hidden = true;
      });
    }
  }
  for (const li of inbox.children) wire(li);
  tick();
  empty();

  function fromHtml(html) {
    const t = document.createElement("template");
    t.innerHTML = html;
    return t.content.firstElementChild;
  }

  const events = new EventSource("/events");
  events.addEventListener("held", (ev) => {
    const m = JSON.parse(ev.data);
    if (document.getElementById(`a-${m.id}`)) return;
    const li = fromHtml(m.html);
    inbox.prepend(li);
    wire(li);
    tick();
    empty();
  });
  events.addEventListener("decided", (ev) => {
    const m = JSON.parse(ev.data);
    const li = document.getElementById(`a-${m.id}`);
    if (li) li.remove();
    const done = fromHtml(m.html);
    const old = document.getElementById(done.id);
    if (old) old.remove();
    decided.prepend(done);
    empty();
  });
  // The stream opens with what is pending now: anything on the page
  // that is not was decided or expired while the page loaded.
  events.addEventListener("synced", (ev) => {
    const pending = new Set(JSON.parse(ev.data).pending);
    for (const li of [...inbox.children]) {
      if (!pending.has(li.dataset.id)) li.remove();
    }
    document.body.dataset.synced = "1";
    empty();
  });
  events.addEventListener("signed-out", () => {
    events.close();
    location.assign("/");
  });
})();
