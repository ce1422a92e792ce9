"use strict";
// Alerts (connstats.sink.alerts: the alerts firing now) and Policy (a probe's active policy,
// the violations published while the page's server ran, the denied connections of a range
// from the store, and a learn preview from the store).
cs.views.alerts = (() => {
  async function load() {
    const summary = document.getElementById("alerts-summary");
    const body = document.querySelector("#alerts-table tbody");
    try {
      const answer = await cs.api("alerts");
      summary.textContent = answer.alerts.length ? `${answer.alerts.length} alerts firing now` : "no alert is firing";
      body.innerHTML = answer.alerts.map(a => {
        const labels = Object.entries(a.labels || {}).filter(([k]) => k !== "alertname" && k !== "severity")
          .map(([k, v]) => `${k}=${v}`).join(", ");
        return `<tr data-rule="${cs.escape(a.rule || "")}"><td>${cs.escape(a.rule || "")}</td>` +
          `<td>${cs.escape((a.labels || {}).severity || "")}</td>` +
          `<td>${a.started_ms ? new Date(a.started_ms).toLocaleString() : ""}</td><td>${cs.escape(labels)}</td>` +
          `<td class="num">${cs.escape(a.value ?? "")}</td></tr>`;
      }).join("");
    } catch (error) {
      summary.textContent = `error: ${error.message}`;
      body.innerHTML = "";
    }
  }
  return { show: load };
})();

cs.views.policy = (() => {
  let learned = false;

  async function loadActive() {
    const summary = document.getElementById("policy-summary");
    const body = document.getElementById("policy-body");
    const violations = document.querySelector("#violations-table tbody");
    try {
      const answer = await cs.api("policy", cs.formParams(document.getElementById("policy-filters")));
      summary.dataset.mode = answer.mode || "";
      if (!answer.available) {
        summary.innerHTML = `<span class="unavailable">The policy of host ${cs.escape(answer.host)} is not available: ` +
          `${cs.escape(answer.reason)}</span>`;
        body.innerHTML = body.dataset.shown = "";
        return;
      }
      const governed = answer.governed.map(d => `${d.ifname} (${d.groups.join(", ")})`).join("; ");
      summary.textContent = answer.mode === "off" ? `host ${answer.host}: no policy (mode off)` :
        `host ${answer.host}: mode ${answer.mode}, ${answer.groups} groups, ${answer.rules} rules; governs ${governed || "no device"}`;
      const text = answer.text ? `<pre class="toml">${cs.escape(answer.text)}</pre>` : "";
      if (body.dataset.shown !== text) { body.innerHTML = text; body.dataset.shown = text; }  // polled: keep a selection
      violations.innerHTML = answer.violations.map(v =>
        `<tr><td>${new Date(v.interval_end / 1e6).toLocaleTimeString()}</td><td>${cs.escape(v.mode)}</td>` +
        `<td>${cs.escape(v.ifname)}</td><td>${cs.escape(v.proto)}</td>` +
        `<td>${cs.escape(cs.endpoint(v.src_ip, v.src_port))}</td><td>${cs.escape(cs.endpoint(v.dst_ip, v.dst_port))}</td>` +
        `<td>${cs.escape((v.from_groups || []).join(", "))}</td><td>${cs.escape((v.to_groups || []).join(", "))}</td>` +
        `<td class="num">${v.packets}</td><td class="num">${v.bytes}</td></tr>`).join("");
    } catch (error) {
      summary.textContent = `error: ${error.message}`;
      body.innerHTML = body.dataset.shown = "";
      violations.innerHTML = "";
    }
  }

  // The store's denied connections of the chosen range (the verdict column), per connection.
  async function loadDenied() {
    const summary = document.getElementById("denied-summary");
    const table = document.getElementById("denied-table");
    const params = {...cs.formParams(document.getElementById("denied-filters")),
                    host: document.getElementById("policy-filters").elements.host.value};
    try {
      const answer = await cs.api("policy/violations", params);
      summary.textContent = `host ${answer.host}: ${answer.connections} denied connections, ${answer.packets} packets ` +
        `(${cs.bytes(answer.bytes)}) from ${new Date(answer.since_ms).toLocaleString()} to ` +
        `${new Date(answer.until_ms).toLocaleString()}` + (answer.rows.length < answer.connections ?
        `; the ${answer.rows.length} busiest shown` : "");
      table.tBodies[0].innerHTML = answer.rows.map(r =>
        `<tr><td>${cs.escape(r.ifname)}</td><td>${cs.escape(r.direction)}</td><td>${cs.escape(r.proto)}</td>` +
        `<td>${cs.escape(cs.endpoint(r.src_ip, r.src_port))}</td><td>${cs.escape(cs.endpoint(r.dst_ip, r.dst_port))}</td>` +
        `<td>${new Date(r.first_seen_ms).toLocaleTimeString()}</td><td>${new Date(r.last_seen_ms).toLocaleTimeString()}</td>` +
        `<td class="num">${r.packets}</td><td class="num">${r.bytes}</td></tr>`).join("");
      table.dataset.since = answer.since_ms;
      table.dataset.until = answer.until_ms;
    } catch (error) {
      summary.textContent = `error: ${error.message}`;
      table.tBodies[0].innerHTML = "";
    }
  }

  // While the view is open, the violations the probes publish are fetched as they arrive.
  let polling = null, busy = false;
  function poll() {
    if (document.getElementById("view-policy").hidden) { clearInterval(polling); polling = null; return; }
    if (!busy) { busy = true; loadActive().finally(() => { busy = false; }); }
  }

  async function learn() {
    const summary = document.getElementById("learn-summary");
    const pre = document.getElementById("learn-toml");
    summary.textContent = "learning…";
    try {
      const answer = await cs.api("policy/learn", cs.formParams(document.getElementById("learn-filters")));
      summary.textContent = `host ${answer.host}: ${answer.groups} groups, ${answer.rules} rules allowing ` +
        `${answer.connections} connections (${cs.bytes(answer.bytes)}) seen from ` +
        `${new Date(answer.since_ms).toLocaleString()} to ${new Date(answer.until_ms).toLocaleString()}`;
      pre.textContent = answer.toml;
      pre.dataset.rules = answer.rules;
    } catch (error) {
      summary.textContent = `error: ${error.message}`;
      pre.textContent = "";
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("learn-filters").addEventListener("submit", e => { e.preventDefault(); learn(); });
    document.getElementById("policy-filters").addEventListener("submit", e => {
      e.preventDefault(); loadActive(); loadDenied(); });
    document.getElementById("denied-filters").addEventListener("submit", e => { e.preventDefault(); loadDenied(); });
  });

  return { show() {
    loadActive();
    loadDenied();
    if (polling === null) polling = setInterval(poll, 3000);
    if (!learned) { learned = true; learn(); }
  } };
})();
