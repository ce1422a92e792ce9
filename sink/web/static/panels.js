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
  async function load() {
    const summary = document.getElementById("policy-summary");
    try {
      const answer = await cs.api("policy");
      if (!answer.available) {
        summary.innerHTML = `<div class="unavailable">Policy is not available: ${cs.escape(answer.reason)}</div>`;
        return;
      }
      summary.textContent = `mode ${answer.mode}`;
      document.getElementById("policy-body").innerHTML = `<pre>${cs.escape(JSON.stringify(answer.policy, null, 2))}</pre>`;
    } catch (error) {
      summary.textContent = `error: ${error.message}`;
    }
  }
  return { show: load };
})();
