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
    const source = new EventSource(live.dataset.live);
    source.addEventListener("tenant", (message) => {
      const t = JSON.parse(message.data);
      const badge = document.createElement("span");
      badge.className = "badge " + tone(t.status);
      badge.textContent = t.status.replace(/_/g, " ");
      live.replaceChildren(badge);
      live.dataset.status = t.status;
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

  function tone(status) {
    if (status === "active") return "good";
    if (status === "provisioning" || status === "waking" || status === "paused") return "wait";
    if (status === "suspended" || status === "sleeping") return "warn";
    if (status === "failed" || status === "deleted") return "bad";
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
