// tenantgate Command Center: the few things a page does live. Loaded with `defer`
// from /assets; the Content-Security-Policy allows no inline script.
"use strict";

(function () {
  // New store: check the slug as it is typed; offer only the chosen blueprint's themes.
  const slug = document.querySelector("input[data-check]");
  if (slug) {
    const status = document.getElementById("slug-status");
    let timer = null;
    let seq = 0;
    slug.addEventListener("input", () => {
      clearTimeout(timer);
      const value = slug.value.trim();
      if (!value) { status.textContent = ""; status.className = "help"; return; }
      timer = setTimeout(async () => {
        const mine = ++seq;
        try {
          const r = await fetch(slug.dataset.check + "?slug=" + encodeURIComponent(value),
            { credentials: "same-origin" });
          const a = await r.json();
          if (mine !== seq) return;
          status.textContent = a.message;
          status.className = "help " + (a.ok ? "ok" : "bad");
          slug.setCustomValidity(a.ok ? "" : a.message);
        } catch (e) {
          status.textContent = "";
        }
      }, 200);
    });
  }
  const blueprint = document.getElementById("blueprint");
  const theme = document.getElementById("theme");
  if (blueprint && theme) {
    const show = () => {
      let first = null;
      for (const group of theme.querySelectorAll("optgroup")) {
        const on = group.dataset.blueprint === blueprint.value;
        group.hidden = !on;
        group.disabled = !on;
        if (on && !first) first = group.querySelector("option");
      }
      const chosen = theme.selectedOptions[0];
      if (!chosen || chosen.parentElement.disabled) {
        if (first) first.selected = true;
      }
    };
    blueprint.addEventListener("change", show);
    show();
  }

  // A store's page: status, generation, reason and timeline as they change.
  const live = document.querySelector("[data-live]");
  if (live && window.EventSource) {
    const events = document.getElementById("store-events");
    const reason = document.getElementById("store-reason");
    const liveLinks = document.getElementById("store-live");
    const generation = document.getElementById("store-generation");
    stream(live.dataset.live, "tenant", (message) => {
      const t = JSON.parse(message.data);
      // A new status changes what the page offers (actions, containers, upstreams): draw
      // it again from the server rather than patching every part here.
      if (live.dataset.status && t.status !== live.dataset.status) {
        window.location.reload();
        return;
      }
      if (generation) generation.textContent = t.generation == null ? "—" : String(t.generation);
      if (reason) {
        reason.textContent = t.status_reason || "";
        reason.hidden = !t.status_reason;
      }
      if (liveLinks) {
        liveLinks.replaceChildren(document.createTextNode("Live: "));
        for (const url of t.urls) {
          const a = document.createElement("a");
          a.href = url;
          a.textContent = url;
          liveLinks.append(a, document.createTextNode(" "));
        }
        liveLinks.hidden = !t.live;
      }
      const chart = document.getElementById("store-traffic");
      // Markup drawn by the server from numbers only (the charts), never from tenant text.
      if (chart && t.traffic) chart.innerHTML = t.traffic;
      for (const d of t.domains || []) {
        setBadge(document.querySelector('[data-domain-status="' + d.id + '"]'), d.status);
        setBadge(document.querySelector('[data-domain-ssl="' + d.id + '"]'), d.ssl);
      }
      if (events) {
        const items = t.events.map((e) => {
          const li = document.createElement("li");
          const time = document.createElement("time");
          time.dateTime = e.at;
          time.title = e.at;
          time.textContent = e.at.slice(0, 19).replace("T", " ");
          const span = document.createElement("span");
          span.textContent = e.message;
          li.append(time, document.createTextNode(" "), span);
          return li;
        });
        events.replaceChildren(...items);
      }
    });
  }

  // The overview: the platform's traffic charts as the proxies report.
  const traffic = document.querySelector("[data-traffic]");
  if (traffic && window.EventSource) {
    const summary = document.getElementById("traffic-summary");
    stream(traffic.dataset.traffic, "traffic", (message) => {
      const t = JSON.parse(message.data);
      traffic.innerHTML = t.charts;
      if (summary) summary.textContent = t.summary;
    });
  }

  // An event stream held only while the page is shown: a browser keeps at most six
  // HTTP/1.1 connections to the admin listener, so hidden tabs and pages left behind must
  // not hold theirs (the next form or page would wait for a free one).
  function stream(url, name, handle) {
    let source = null;
    const open = () => {
      if (source || document.visibilityState !== "visible") return;
      source = new EventSource(url);
      source.addEventListener(name, handle);
    };
    const close = () => {
      if (source) source.close();
      source = null;
    };
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") open(); else close();
    });
    window.addEventListener("pagehide", close);
    window.addEventListener("pageshow", open);
    open();
  }

  function setBadge(holder, status) {
    if (!holder) return;
    const badge = document.createElement("span");
    badge.className = "badge " + tone(status);
    badge.textContent = status.replace(/_/g, " ");
    holder.replaceChildren(badge);
  }

  function tone(status) {
    if (status === "active") return "good";
    if (["provisioning", "waking", "paused", "pending_verification", "pending_validation",
         "pending_issuance", "renewing"].includes(status)) return "wait";
    if (["suspended", "sleeping", "moved", "blocked"].includes(status)) return "warn";
    if (["failed", "deleted", "expired"].includes(status)) return "bad";
    return "plain";
  }

  // Copy buttons (DNS records).
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(button.dataset.copy);
        button.textContent = "Copied";
      } catch (e) {
        button.textContent = "Select and copy";
      }
    });
  }

  // Delete: the button stays disabled until the slug is typed exactly.
  for (const input of document.querySelectorAll("input[data-must]")) {
    const button = input.form.querySelector("button[type=submit]");
    const check = () => { button.disabled = input.value.trim() !== input.dataset.must; };
    input.addEventListener("input", check);
    check();
  }
})();
