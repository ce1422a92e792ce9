"use strict";
// Alerts (connstats.sink.alerts: the alerts firing now) and Policy (a probe's active policy,
// its recent violations, and a learn preview from the store).
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
        body.innerHTML = "";
        return;
      }
      const governed = answer.governed.map(d => `${d.ifname} (${d.groups.join(", ")})`).join("; ");
      summary.textContent = answer.mode === "off" ? `host ${answer.host}: no policy (mode off)` :
        `host ${answer.host}: mode ${answer.mode}, ${answer.groups} groups, ${answer.rules} rules; governs ${governed || "no device"}`;
      body.innerHTML = answer.text ? `<pre class="toml">${cs.escape(answer.text)}</pre>` : "";
      violations.innerHTML = answer.violations.map(v =>
        `<tr><td>${new Date(v.interval_end / 1e6).toLocaleTimeString()}</td><td>${cs.escape(v.mode)}</td>` +
        `<td>${cs.escape(v.ifname)}</td><td>${cs.escape(v.proto)}</td>` +
        `<td>${cs.escape(cs.endpoint(v.src_ip, v.src_port))}</td><td>${cs.escape(cs.endpoint(v.dst_ip, v.dst_port))}</td>` +
        `<td>${cs.escape((v.from_groups || []).join(", "))}</td><td>${cs.escape((v.to_groups || []).join(", "))}</td>` +
        `<td class="num">${v.packets}</td><td class="num">${v.bytes}</td></tr>`).join("");
    } catch (error) {
      summary.textContent = `error: ${error.message}`;
      body.innerHTML = "";
      violations.innerHTML = "";
    }
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
    document.getElementById("policy-filters").addEventListener("submit", e => { e.preventDefault(); loadActive(); });
  });

  return { show() { loadActive(); if (!learned) { learned = true; learn(); } } };
})();
