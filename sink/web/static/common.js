"use strict";
// Shared by every view: the tabs, the API call, number formats.
const cs = {
  views: {},  // name -> {show(): called when the tab opens}

  async api(path, params) {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) if (v !== "" && v != null) query.set(k, v);
    const response = await fetch(`/api/${path}?${query}`);
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || `${response.status}`);
    return body;
  },

  formParams(form) {
    return Object.fromEntries(new FormData(form).entries());
  },

  status(text) { document.getElementById("status").textContent = text; },

  escape(text) {
    return String(text).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  },

  endpoint(ip, port) { return ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`; },

  process(name, pid) { return name ? (pid ? `${name} (${pid})` : name) : ""; },  // "" when not known

  rtt(us) { return !us ? "" : us < 1000 ? `${us} µs` : `${(us / 1000).toFixed(1)} ms`; },  // "" when not measured

  drops(packets, reason) { return packets ? `${packets}${reason ? ` (${reason})` : ""}` : ""; },

  bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
  },

  show(name) {
    for (const button of document.querySelectorAll("#tabs button"))
      button.classList.toggle("active", button.dataset.view === name);
    for (const section of document.querySelectorAll(".view"))
      section.hidden = section.id !== `view-${name}`;
    if (cs.views[name]) cs.views[name].show();
    history.replaceState(null, "", `#${name}`);
  },
};

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("#tabs button"))
    button.addEventListener("click", () => cs.show(button.dataset.view));
  const first = location.hash.slice(1);
  cs.show(cs.views[first] ? first : "live");
});
