"use strict";
// Map: who talked to whom over a time range. A deterministic layout, no forces: containers
// and devices on an inner circle (sorted by id), outside peers on an outer circle, each
// peer next to the node it exchanged the most bytes with. Edge width follows bytes (log).
cs.views.map = (() => {
  const SIZE = 1000, CENTER = 500, INNER = 230, OUTER = 440, PEER_LABELS = 60;
  let data = null;
  let loaded = false;

  function layout(nodes, edges) {
    const local = nodes.filter(n => n.kind !== "peer");
    const peers = nodes.filter(n => n.kind === "peer");
    const at = new Map();
    local.forEach((n, i) => {
      const angle = 2 * Math.PI * i / Math.max(local.length, 1) - Math.PI / 2;
      const radius = local.length === 1 ? 0 : INNER;
      at.set(n.id, {x: CENTER + radius * Math.cos(angle), y: CENTER + radius * Math.sin(angle), angle});
    });
    const partner = new Map();  // peer -> [bytes, local node angle]
    for (const e of edges) {
      for (const [peer, other] of [[e.source, e.target], [e.target, e.source]]) {
        if (!peer.startsWith("peer:") || !at.has(other)) continue;
        const best = partner.get(peer);
        if (!best || e.bytes > best[0]) partner.set(peer, [e.bytes, at.get(other).angle]);
      }
    }
    const order = peers.map(n => [partner.has(n.id) ? partner.get(n.id)[1] : 10, n.id])
      .sort((a, b) => a[0] - b[0] || (a[1] < b[1] ? -1 : 1));
    order.forEach(([, id], i) => {
      const angle = 2 * Math.PI * i / Math.max(order.length, 1) - Math.PI / 2;
      at.set(id, {x: CENTER + OUTER * Math.cos(angle), y: CENTER + OUTER * Math.sin(angle), angle});
    });
    return at;
  }

  function render(body) {
    data = body;
    const at = layout(body.nodes, body.edges);
    const maxBytes = body.edges.reduce((m, e) => Math.max(m, e.bytes), 1);
    const scale = Math.log1p(maxBytes);
    const parts = [];
    for (const e of body.edges) {
      const a = at.get(e.source), b = at.get(e.target);
      const width = (0.5 + 7.5 * Math.log1p(e.bytes) / scale).toFixed(2);
      parts.push(`<line class="edge${e.verdict ? " " + e.verdict : ""}" x1="${a.x.toFixed(1)}" y1="${a.y.toFixed(1)}" ` +
        `x2="${b.x.toFixed(1)}" y2="${b.y.toFixed(1)}" stroke-width="${width}" data-source="${cs.escape(e.source)}" ` +
        `data-target="${cs.escape(e.target)}" data-bytes="${e.bytes}" data-packets="${e.packets}" ` +
        `data-verdict="${e.verdict}"></line>`);
    }
    const maxNode = Math.log1p(body.nodes.reduce((m, n) => Math.max(m, n.bytes), 1));
    const labelPeers = body.nodes.filter(n => n.kind === "peer").length <= PEER_LABELS;
    for (const n of body.nodes) {
      const p = at.get(n.id);
      const r = (n.kind === "peer" ? 3 : 6) + 8 * Math.log1p(n.bytes) / maxNode;
      parts.push(`<circle class="node ${n.kind}" cx="${p.x.toFixed(1)}" cy="${p.y.toFixed(1)}" r="${r.toFixed(1)}" ` +
        `data-id="${cs.escape(n.id)}" data-bytes="${n.bytes}"><title>${cs.escape(n.label)}: ${cs.bytes(n.bytes)}</title></circle>`);
      if (n.kind !== "peer" || labelPeers) {
        const dx = p.x >= CENTER ? r + 3 : -(r + 3), anchor = p.x >= CENTER ? "start" : "end";
        parts.push(`<text x="${(p.x + dx).toFixed(1)}" y="${(p.y + 4).toFixed(1)}" text-anchor="${anchor}">${cs.escape(n.label)}</text>`);
      }
    }
    document.getElementById("map-svg").innerHTML = parts.join("");
  }

  function select(id) {
    const svg = document.getElementById("map-svg");
    for (const c of svg.querySelectorAll(".node.selected")) c.classList.remove("selected");
    for (const e of svg.querySelectorAll(".edge.hl")) e.classList.remove("hl");
    const node = data.nodes.find(n => n.id === id);
    if (!node) return;
    svg.querySelector(`.node[data-id="${CSS.escape(id)}"]`).classList.add("selected");
    for (const e of svg.querySelectorAll(`.edge[data-source="${CSS.escape(id)}"], .edge[data-target="${CSS.escape(id)}"]`))
      e.classList.add("hl");
    const rows = data.connections.filter(c => c[0] === id || c[1] === id).sort((a, b) => b[8] - a[8]);
    document.getElementById("map-node-title").textContent =
      `${node.label}: ${rows.length} connections, ${cs.bytes(node.bytes)}`;
    document.querySelector("#map-connections tbody").innerHTML = rows.slice(0, 500).map(c =>
      `<tr><td>${c[2]}</td><td>${cs.escape(cs.endpoint(c[3], c[4]))}</td><td>${cs.escape(cs.endpoint(c[5], c[6]))}</td>` +
      `<td class="num">${c[7]}</td><td class="num">${c[8]}</td><td class="${c[9]}">${c[9]}</td></tr>`).join("");
  }

  async function load() {
    const started = performance.now();
    const summary = document.getElementById("map-summary");
    summary.textContent = "loading…";
    try {
      const body = await cs.api("map", cs.formParams(document.getElementById("map-filters")));
      const fetched = performance.now();
      render(body);
      await new Promise(resolve => requestAnimationFrame(() => requestAnimationFrame(resolve)));
      const done = performance.now();
      const svg = document.getElementById("map-svg");
      svg.dataset.renderMs = (done - fetched).toFixed(1);
      svg.dataset.totalMs = (done - started).toFixed(1);
      svg.dataset.since = body.since_ms;
      svg.dataset.until = body.until_ms;
      summary.textContent = `${body.nodes.length} nodes, ${body.edges.length} edges, ${body.connections.length} ` +
        `connections from ${new Date(body.since_ms).toLocaleString()} to ${new Date(body.until_ms).toLocaleString()}; ` +
        `drawn in ${(done - fetched).toFixed(0)} ms`;
    } catch (error) {
      summary.textContent = `error: ${error.message}`;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("map-filters").addEventListener("submit", e => { e.preventDefault(); load(); });
    document.getElementById("map-svg").addEventListener("click", e => {
      if (e.target.classList.contains("node")) select(e.target.dataset.id);
    });
  });

  return { show() { if (!loaded) { loaded = true; load(); } }, load, select };
})();
