"use strict";
// Map: who talked to whom over a time range. A deterministic layout, no forces: pods
// (grouped by Kubernetes namespace), containers, hosts and devices on an inner circle, a
// lone host in the middle, outside peers on an outer circle, each peer next to the node it
// exchanged the most bytes with. Edge width follows bytes (log); its colour the verdict, or
// (chosen) its greatest RTT or its drops, where the store has them.
cs.views.map = (() => {
  const SIZE = 1000, CENTER = 500, INNER = 230, OUTER = 440, PEER_LABELS = 60;
  let data = null;
  let loaded = false;

  // The inner ring: pods grouped by Kubernetes namespace (namespaces in name order), then
  // the other containers, hosts and devices in the server's order. One host alone sits in
  // the middle, its containers around it.
  function ring(nodes) {
    const local = nodes.filter(n => n.kind !== "peer");
    const hosts = local.filter(n => n.kind === "host");
    const centre = hosts.length === 1 && local.length > 1 ? hosts[0] : null;
    const around = local.filter(n => n !== centre).map((n, i) => [n, i]).sort(([a, i], [b, j]) =>
      (a.namespace ? 0 : 1) - (b.namespace ? 0 : 1) || (a.namespace < b.namespace ? -1 : a.namespace > b.namespace ? 1 : 0) || i - j);
    return {centre, around: around.map(([n]) => n)};
  }

  function layout(nodes, edges) {
    const {centre, around} = ring(nodes);
    const peers = nodes.filter(n => n.kind === "peer");
    const at = new Map();
    if (centre) at.set(centre.id, {x: CENTER, y: CENTER, angle: 0});
    around.forEach((n, i) => {
      const angle = 2 * Math.PI * i / Math.max(around.length, 1) - Math.PI / 2;
      const radius = around.length === 1 && !centre ? 0 : INNER;
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
    return {at, clusters: clusters(around)};
  }

  // One band per Kubernetes namespace over the arc of the ring its pods take.
  function clusters(around) {
    const step = 2 * Math.PI / Math.max(around.length, 1), out = [];
    around.forEach((n, i) => {
      if (!n.namespace) return;
      const last = out[out.length - 1];
      if (last && last.namespace === n.namespace) last.to = i; else out.push({namespace: n.namespace, from: i, to: i});
    });
    return out.map(c => ({...c, start: step * (c.from - 0.45) - Math.PI / 2, end: step * (c.to + 0.45) - Math.PI / 2,
                         members: c.to - c.from + 1}));
  }

  function arc(start, end, radius) {
    if (end - start >= 2 * Math.PI - 1e-6)
      return `M ${CENTER - radius} ${CENTER} a ${radius} ${radius} 0 1 1 ${2 * radius} 0 a ${radius} ${radius} 0 1 1 ${-2 * radius} 0`;
    const p = a => `${(CENTER + radius * Math.cos(a)).toFixed(1)} ${(CENTER + radius * Math.sin(a)).toFixed(1)}`;
    return `M ${p(start)} A ${radius} ${radius} 0 ${end - start > Math.PI ? 1 : 0} 1 ${p(end)}`;
  }

  function title(n) {
    const lines = [n.kind === "pod" ? `pod ${n.namespace}/${n.label}` : n.kind === "host" ? `host ${n.label}` : n.label];
    if (n.workload) lines.push(`workload ${n.workload}`);
    lines.push(cs.bytes(n.bytes));
    if (n.drops) lines.push("dropped with no connection: " + n.drops.map(d => `${d[0]} ${d[1]} ${d[2]}`).join(", "));
    if (n.processes && n.processes.length) lines.push("processes: " + n.processes.map(([p, pid]) => cs.process(p, pid)).join(", "));
    return lines.join("\n");
  }

  // An edge's colour bucket by its greatest RTT and by its drops (style.css colours them
  // under the chosen mode); an edge without RTT samples is "rtt-none".
  const RTT_STEPS_US = [1000, 10000, 50000, 100000], DROP_STEPS = [1, 10, 100, 1000];
  const bucket = (value, steps) => steps.filter(s => value >= s).length;
  function qualityClasses(e) {
    return ` ${e.rtt_max_us ? `rtt-${bucket(e.rtt_max_us, RTT_STEPS_US)}` : "rtt-none"} drop-${bucket(e.drop_packets, DROP_STEPS)}`;
  }
  function qualityData(e) {
    return ` data-rtt-max-us="${e.rtt_max_us}" data-retransmits="${e.retransmits}" data-drop-packets="${e.drop_packets}" ` +
      `data-drop-reason="${cs.escape(e.drop_reason)}"`;
  }

  // An edge's tooltip, made when the pointer first reaches it (a title per edge up front
  // would triple the drawing time of a big map).
  function edgeTitle(e) {
    const label = id => { const n = data.nodes.find(n => n.id === id); return n ? n.label : id; };
    const lines = [`${label(e.source)} → ${label(e.target)}`,
      `${e.connections} connections, ${e.packets} packets, ${cs.bytes(e.bytes)}`];
    if (e.rtt_max_us) lines.push(`RTT max ${cs.rtt(e.rtt_max_us)}`);
    if (e.retransmits) lines.push(`${e.retransmits} retransmits`);
    if (e.drop_packets) lines.push(`${e.drop_packets} dropped (${cs.bytes(e.drop_bytes)}), mostly ${e.drop_reason}`);
    return lines.join("\n");
  }

  function render(body) {
    data = body;
    const {at, clusters} = layout(body.nodes, body.edges);
    // the namespaces' bands under everything, their names over everything
    const parts = clusters.map(c => `<path class="cluster" d="${arc(c.start, c.end, INNER)}" ` +
      `data-namespace="${cs.escape(c.namespace)}" data-members="${c.members}"></path>`);
    const names = clusters.map(c => {
      const middle = (c.start + c.end) / 2, r = INNER - 48;
      return `<text class="cluster-name" x="${(CENTER + r * Math.cos(middle)).toFixed(1)}" ` +
        `y="${(CENTER + r * Math.sin(middle) + 4).toFixed(1)}" text-anchor="middle">${cs.escape(c.namespace)}</text>`;
    });
    const maxBytes = body.edges.reduce((m, e) => Math.max(m, e.bytes), 1);
    const scale = Math.log1p(maxBytes);
    body.edges.forEach((e, i) => {
      const a = at.get(e.source), b = at.get(e.target);
      const width = (0.5 + 7.5 * Math.log1p(e.bytes) / scale).toFixed(2);
      parts.push(`<line class="edge${e.verdict ? " " + e.verdict : ""}${body.quality ? qualityClasses(e) : ""}" ` +
        `x1="${a.x.toFixed(1)}" y1="${a.y.toFixed(1)}" ` +
        `x2="${b.x.toFixed(1)}" y2="${b.y.toFixed(1)}" stroke-width="${width}" data-source="${cs.escape(e.source)}" ` +
        `data-target="${cs.escape(e.target)}" data-bytes="${e.bytes}" data-packets="${e.packets}" ` +
        `data-verdict="${e.verdict}" data-i="${i}"${body.quality ? qualityData(e) : ""}></line>`);
    });
    const maxNode = Math.log1p(body.nodes.reduce((m, n) => Math.max(m, n.bytes), 1));
    const labelPeers = body.nodes.filter(n => n.kind === "peer").length <= PEER_LABELS;
    for (const n of body.nodes) {
      const p = at.get(n.id);
      const r = (n.kind === "peer" ? 3 : 6) + 8 * Math.log1p(n.bytes) / maxNode;
      parts.push(`<circle class="node ${n.kind}" cx="${p.x.toFixed(1)}" cy="${p.y.toFixed(1)}" r="${r.toFixed(1)}" ` +
        `data-id="${cs.escape(n.id)}" data-bytes="${n.bytes}" data-namespace="${cs.escape(n.namespace || "")}">` +
        `<title>${cs.escape(title(n))}</title></circle>`);
      if (n.kind !== "peer" || labelPeers) {
        const dx = p.x >= CENTER ? r + 3 : -(r + 3), anchor = p.x >= CENTER ? "start" : "end";
        parts.push(`<text x="${(p.x + dx).toFixed(1)}" y="${(p.y + 4).toFixed(1)}" text-anchor="${anchor}">${cs.escape(n.label)}</text>`);
      }
    }
    document.getElementById("map-svg").innerHTML = parts.concat(names).join("");
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
      `${node.kind === "pod" ? `${node.namespace}/${node.label}` : node.label}: ${rows.length} connections, ${cs.bytes(node.bytes)}`;
    document.querySelector("#map-connections tbody").innerHTML = rows.slice(0, 500).map(c =>
      `<tr><td>${c[2]}</td><td>${cs.escape(cs.endpoint(c[3], c[4]))}</td><td>${cs.escape(cs.process(c[10], c[11]))}</td>` +
      `<td>${cs.escape(cs.endpoint(c[5], c[6]))}</td><td>${cs.escape(cs.process(c[12], c[13]))}</td>` +
      `<td class="num">${c[7]}</td><td class="num">${c[8]}</td><td class="${c[9]}">${c[9]}</td>` +
      (data.quality ? `<td class="num quality">${cs.rtt(c[14])}</td><td class="num quality">${cs.rtt(c[15])}</td>` +
       `<td class="num quality">${c[16] || ""}</td><td class="quality">${cs.escape(cs.drops(c[17], c[18]))}</td>` : "") +
      `</tr>`).join("");
    document.getElementById("map-connections").classList.toggle("with-quality", data.quality);
    const drops = document.getElementById("map-node-drops");
    drops.hidden = !node.drops;
    drops.textContent = node.drops ? "dropped on the device with no connection: " + node.drops.map(d =>
      `${d[0]} ${d[1]}: ${d[2]} packets (${cs.bytes(d[3])})`).join(", ") : "";
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
    const colour = document.getElementById("map-colour");
    const paint = () => {  // the mode lives on the svg: style.css colours the edges, nothing is redrawn
      document.getElementById("map-svg").dataset.colour = colour.value;
      document.getElementById("map-legend").dataset.mode = colour.value;
    };
    colour.addEventListener("change", paint);
    paint();
    document.getElementById("map-svg").addEventListener("mouseover", e => {
      const edge = e.target;
      if (!edge.classList.contains("edge") || edge.firstChild) return;
      const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
      title.textContent = edgeTitle(data.edges[Number(edge.dataset.i)]);
      edge.appendChild(title);
    });
    document.getElementById("map-svg").addEventListener("click", e => {
      if (e.target.classList.contains("node")) select(e.target.dataset.id);
    });
  });

  return { show() { if (!loaded) { loaded = true; load(); } }, load, select };
})();
