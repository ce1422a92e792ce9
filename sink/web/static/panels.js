"use strict";
// Alerts and Policy: shown when this connstats has them, else a clear "not available".
cs.views.alerts = (() => {
  async function load() {
    const summary = document.getElementById("alerts-summary");
    const body = document.querySelector("#alerts-table tbody");
    try {
      const answer = await cs.api("alerts");
      if (!answer.available) {
        summary.innerHTML = `<div class="unavailable">Alerts are not available: ${cs.escape(answer.reason)}</div>`;
        body.innerHTML = "";
        return;
      }
      summary.textContent = `${answer.alerts.length} alerts firing now`;
      body.innerHTML = answer.alerts.map(a =>
        `<tr><td>${cs.escape(a.rule || a.name || "")}</td><td>${cs.escape(a.severity || "")}</td>` +
        `<td>${cs.escape(a.since || a.started_at || "")}</td><td>${cs.escape(a.summary || a.message || JSON.stringify(a))}</td></tr>`).join("");
    } catch (error) {
      summary.textContent = `error: ${error.message}`;
    }
  }
  return { show: load };
})();

cs.views.policy = (() => {
  let learned = false;

  async function loadActive() {
    const summary = document.getElementById("policy-summary");
    try {
      const answer = await cs.api("policy");
      if (!answer.available) {
        summary.innerHTML = `<div class="unavailable">The active policy is not available: ${cs.escape(answer.reason)}</div>`;
        return;
      }
      summary.textContent = `mode ${answer.mode}`;
      document.getElementById("policy-body").innerHTML = `<pre class="toml">${cs.escape(JSON.stringify(answer.policy, null, 2))}</pre>`;
    } catch (error) {
      summary.textContent = `error: ${error.message}`;
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
  });

  return { show() { loadActive(); if (!learned) { learned = true; learn(); } } };
})();
