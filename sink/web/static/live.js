"use strict";
// Live: one server-sent event per interval with its busiest connections (the server picks
// them; the page never receives every row). Filters reconnect; pause keeps the last table.
cs.views.live = (() => {
  let source = null;
  let paused = false;
  let latest = new Map();  // host -> its last interval event
  let pending = 0;
  const form = () => document.getElementById("live-filters");

  function connect() {
    if (source) source.close();
    latest = new Map();
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(cs.formParams(form()))) if (v) params.set(k, v);
    source = new EventSource(`/api/live?${params}`);
    source.addEventListener("interval", e => {
      document.getElementById("live-table").dataset.lastEventBytes = e.data.length;
      receive(JSON.parse(e.data));
    });
    source.onerror = () => cs.status("live: reconnecting…");
    source.onopen = () => cs.status("live: connected");
  }

  function receive(event) {
    latest.set(event.host, event);
    if (paused) { pending++; updatePauseButton(); return; }
    render();
  }

  function render() {
    const limit = Number(form().elements.limit.value) || 50;
    const rows = [...latest.values()].flatMap(e => e.rows)
      .sort((a, b) => b.bytes - a.bytes || b.packets - a.packets).slice(0, limit);
    const body = document.querySelector("#live-table tbody");
    body.innerHTML = rows.map(r =>
      `<tr data-proto="${r.proto}" data-src-port="${r.src_port}" data-dst-port="${r.dst_port}" data-ifname="${cs.escape(r.ifname)}">` +
      `<td>${cs.escape(r.host)}</td><td>${cs.escape(r.ifname)}</td><td>${cs.escape(r.pod || r.container)}</td>` +
      `<td>${r.direction === "ingress" ? "in" : "out"}</td><td>${r.proto}</td>` +
      `<td>${cs.escape(cs.endpoint(r.src_ip, r.src_port))}</td><td>${cs.escape(cs.endpoint(r.dst_ip, r.dst_port))}</td>` +
      `<td class="num packets">${r.packets}</td><td class="num bytes" title="${cs.bytes(r.bytes)}">${r.bytes}</td>` +
      `<td class="${r.verdict}">${r.verdict}</td><td>${cs.escape(cs.process(r.process, r.pid))}</td>` +
      `<td>${cs.escape(cs.process(r.peer_process, r.peer_pid))}</td>` +
      `<td class="num quality rtt" data-us="${r.rtt_avg_us || 0}">${cs.rtt(r.rtt_avg_us)}</td>` +
      `<td class="num quality rtt-max" data-us="${r.rtt_max_us || 0}">${cs.rtt(r.rtt_max_us)}</td>` +
      `<td class="num quality retransmits">${r.retransmits || ""}</td>` +
      `<td class="quality drops" title="${r.drop_bytes ? cs.bytes(r.drop_bytes) : ""}">` +
      `${cs.escape(cs.drops(r.drop_packets, r.drop_reason))}</td></tr>`).join("");
    // the quality columns only when some row shown has RTT, retransmits or drops
    const quality = rows.some(r => r.rtt_max_us || r.retransmits || r.drop_packets);
    document.getElementById("live-table").classList.toggle("with-quality", quality);
    const summary = document.getElementById("live-summary");
    const parts = [...latest.values()].map(e =>
      `${cs.escape(e.host)}: interval ${e.interval_seq} (${new Date(e.interval_end_ms).toLocaleTimeString()}), ` +
      `${e.connections} connections, ${e.packets} packets, ${cs.bytes(e.bytes)}` + (e.drops ?
      `; dropped with no connection: ${e.drops.map(d => `${cs.escape(d.ifname)} ${cs.escape(d.reason)} ${d.packets}`).join(", ")}` : ""));
    summary.innerHTML = parts.join("<br>") || "waiting for the next interval…";
    const table = document.getElementById("live-table");
    table.dataset.intervals = [...latest.values()].map(e => `${e.host}:${e.interval_seq}`).join(" ");
  }

  function updatePauseButton() {
    document.getElementById("live-pause").textContent = paused ? `Resume (${pending} new)` : "Pause";
  }

  document.addEventListener("DOMContentLoaded", () => {
    form().addEventListener("submit", e => { e.preventDefault(); connect(); });
    document.getElementById("live-pause").addEventListener("click", () => {
      paused = !paused;
      if (!paused) { pending = 0; render(); }
      updatePauseButton();
    });
  });

  return { show() { if (!source) connect(); }, render };
})();
