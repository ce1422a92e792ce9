"use strict";
// History: bytes or packets over time per container, interface or port, one dot per point
// the store returned (no smoothing, no invented points); a series' line breaks where a
// bucket between two points has no data.
cs.views.history = (() => {
  const W = 1000, H = 420, LEFT = 80, RIGHT = 20, TOP = 20, BOTTOM = 40, TICKS = 6;
  const COLOURS = ["#2f6fdb", "#e08a1e", "#2e9d57", "#d33c3c", "#7a4bd1", "#8c564b", "#e377c2", "#17becf"];
  let loaded = false;

  // The series' points split where a bucket between two of them holds no data: each run is
  // drawn as a line of its own, so no line crosses a time the store has nothing for.
  function runs(points, everyMs) {
    const out = [];
    points.forEach((p, i) => {
      if (i === 0 || p.time_ms - points[i - 1].time_ms > everyMs) out.push([]);
      out[out.length - 1].push(p);
    });
    return out;
  }

  function render(body, metric) {
    const x = t => LEFT + (W - LEFT - RIGHT) * (t - body.since_ms) / Math.max(1, body.until_ms - body.since_ms);
    const max = body.series.reduce((m, s) => s.points.reduce((n, p) => Math.max(n, p[metric]), m), 1);
    const y = v => H - BOTTOM - (H - TOP - BOTTOM) * v / max;
    const parts = [
      `<line class="axis" x1="${LEFT}" y1="${H - BOTTOM}" x2="${W - RIGHT}" y2="${H - BOTTOM}"></line>`,
      `<line class="axis" x1="${LEFT}" y1="${TOP}" x2="${LEFT}" y2="${H - BOTTOM}"></line>`,
      `<text x="${LEFT - 6}" y="${TOP + 4}" text-anchor="end">${metric === "bytes" ? cs.bytes(max) : max}</text>`,
      `<text x="${LEFT - 6}" y="${H - BOTTOM}" text-anchor="end">0</text>`,
      `<text x="${LEFT}" y="${H - 12}">${new Date(body.since_ms).toLocaleString()}</text>`,
      `<text x="${W - RIGHT}" y="${H - 12}" text-anchor="end">${new Date(body.until_ms).toLocaleString()}</text>`,
    ];
    for (let i = 1; i < TICKS; i++) {  // time of day between the two ends, with a faint grid line
      const t = body.since_ms + (body.until_ms - body.since_ms) * i / TICKS;
      parts.push(`<line class="grid" x1="${x(t).toFixed(1)}" y1="${TOP}" x2="${x(t).toFixed(1)}" y2="${H - BOTTOM}"></line>`,
        `<text x="${x(t).toFixed(1)}" y="${H - BOTTOM + 16}" text-anchor="middle">${new Date(t).toLocaleTimeString()}</text>`);
    }
    body.series.forEach((s, i) => {
      const colour = COLOURS[i % COLOURS.length];
      for (const run of runs(s.points, body.every_ms)) {
        const points = run.map(p => `${x(p.time_ms).toFixed(1)},${y(p[metric]).toFixed(1)}`).join(" ");
        parts.push(`<polyline stroke="${colour}" points="${points}" data-series="${cs.escape(s.key)}"></polyline>`);
      }
      for (const p of s.points)
        parts.push(`<circle class="point" cx="${x(p.time_ms).toFixed(1)}" cy="${y(p[metric]).toFixed(1)}" r="3" fill="${colour}" ` +
          `data-series="${cs.escape(s.key)}" data-time-ms="${p.time_ms}" data-value="${p[metric]}">` +
          `<title>${cs.escape(s.key)} ${new Date(p.time_ms).toLocaleString()}: ${p[metric]} ${metric}</title></circle>`);
    });
    document.getElementById("history-svg").innerHTML = parts.join("");
    document.getElementById("history-legend").innerHTML = body.series.map((s, i) =>
      `<li><span style="background:${COLOURS[i % COLOURS.length]}"></span>${cs.escape(s.key)}</li>`).join("");
  }

  async function load() {
    const form = document.getElementById("history-filters");
    const params = cs.formParams(form);
    const metric = params.metric;
    delete params.metric;
    if (params.since === "fit") Object.assign(params, {since: "1h", fit: "1"});  // the data's span in the last hour
    const summary = document.getElementById("history-summary");
    try {
      const body = await cs.api("history", params);
      render(body, metric);
      const svg = document.getElementById("history-svg");
      Object.assign(svg.dataset, {metric, since: body.since_ms, until: body.until_ms, every: body.every_ms,
                                  fit: body.fit ? "1" : "0"});
      const points = body.series.reduce((n, s) => n + s.points.length, 0);
      summary.textContent = `${body.series.length} series, ${points} points, one per ${body.every_ms / 1000} s` +
        (body.fit ? `, from ${new Date(body.since_ms).toLocaleString()} to ${new Date(body.until_ms).toLocaleString()} (the data's span)` : "");
    } catch (error) {
      summary.textContent = `error: ${error.message}`;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("history-filters");
    form.addEventListener("submit", e => { e.preventDefault(); load(); });
    form.elements.metric.addEventListener("change", load);
  });

  return { show() { if (!loaded) { loaded = true; load(); } }, load };
})();
