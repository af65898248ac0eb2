// The live page of one service: draws each snapshot the server pushes (server-sent events).
"use strict";
const COLORS = ["#d9534f", "#4a90d9", "#2e8b57", "#e6a23c", "#8e44ad", "#16a085", "#7f8c8d"];
const service = decodeURIComponent(location.pathname.split("/").pop());
const W = 800, H = 220, PAD = { l: 44, r: 110, t: 10, b: 24 };

function el(name, attrs, text) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// A setting (replicas, a weight) holds until the next one: draw it as steps, held until `until`.
function steps(points, until) {
  const out = [];
  points.forEach((p, i) => {
    if (i > 0) out.push([p[0], points[i - 1][1]]);
    out.push(p);
  });
  if (points.length) out.push([Math.max(until, points[points.length - 1][0]), points[points.length - 1][1]]);
  return out;
}

// series: [{name, points: [[t, v], ...], step}]; band: optional {lo, hi}; domain: [t0, t1] shared by the page
function chart(svg, series, band, domain) {
  svg.replaceChildren();
  const all = series.flatMap(s => s.points).concat(band ? band.lo.concat(band.hi) : []);
  if (all.length === 0) {
    svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no data yet"));
    return;
  }
  const [t0, t1] = domain;
  const v1 = Math.max(...all.map(p => p[1]), 1e-9) * 1.1;
  const x = t => PAD.l + (t - t0) / (t1 - t0) * (W - PAD.l - PAD.r);
  const y = v => H - PAD.b - v / v1 * (H - PAD.t - PAD.b);
  svg.appendChild(el("line", { x1: PAD.l, y1: H - PAD.b, x2: W - PAD.r, y2: H - PAD.b, class: "axis" }));
  svg.appendChild(el("line", { x1: PAD.l, y1: PAD.t, x2: PAD.l, y2: H - PAD.b, class: "axis" }));
  svg.appendChild(el("text", { x: PAD.l - 4, y: PAD.t + 10, "text-anchor": "end" }, v1.toPrecision(3)));
  svg.appendChild(el("text", { x: PAD.l - 4, y: H - PAD.b, "text-anchor": "end" }, "0"));
  for (const [t, anchor] of [[t0, "start"], [t1, "end"]]) {
    svg.appendChild(el("text", { x: x(t), y: H - 6, "text-anchor": anchor }, new Date(t * 1000).toLocaleTimeString()));
  }
  if (band && band.lo.length && band.hi.length) {
    const pts = band.hi.map(p => `${x(p[0])},${y(p[1])}`).concat(band.lo.slice().reverse().map(p => `${x(p[0])},${y(p[1])}`));
    svg.appendChild(el("polygon", { points: pts.join(" "), class: "band", "data-series": "band" }));
  }
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const drawn = s.step ? steps(s.points, t1) : s.points;
    const line = el("polyline", {
      points: drawn.map(p => `${x(p[0])},${y(p[1])}`).join(" "), stroke: color,
      "data-series": s.name, "data-points": s.points.length,
    });
    svg.appendChild(line);
    svg.appendChild(el("text", { x: W - PAD.r + 8, y: PAD.t + 12 + 14 * i, fill: color }, s.name));
  });
}

function keyed(obj, step) {
  return Object.entries(obj).sort().map(([name, points]) => ({ name, points, step }));
}

function render(snap) {
  document.getElementById("service").textContent = snap.service;
  // One time axis for every chart: the window up to now, and the forecast's future beyond it.
  const future = Object.values(snap.forecast).flat().map(p => p[0]);
  const domain = [snap.generated_at - snap.window_minutes * 60, Math.max(snap.generated_at, ...future)];
  chart(document.getElementById("chart-rate"), [{ name: "observed", points: snap.rate }],
        { lo: snap.forecast["0.5"] || [], hi: snap.forecast["0.9"] || [] }, domain);
  chart(document.getElementById("chart-replicas"),
        [{ name: "desired", points: snap.desired, step: true },
         { name: "shadow HPA", points: snap.shadow, step: true }], null, domain);
  chart(document.getElementById("chart-weights"), keyed(snap.weights, true), null, domain);
  chart(document.getElementById("chart-risk"), keyed(snap.risk, false), null, domain);
  const health = document.getElementById("health");
  health.replaceChildren(...snap.health.map(c => {
    const li = document.createElement("li");
    li.textContent = `${c.name}: ${c.state}`;
    li.className = c.state;
    return li;
  }));
  const body = document.querySelector("#decisions tbody");
  body.replaceChildren(...snap.decisions.map(d => {
    const tr = document.createElement("tr");
    tr.dataset.ts = d.ts_ms;
    const cells = [new Date(d.ts_ms).toLocaleTimeString(), d.actuator, d.target, d.action,
                   `${d.before ?? "–"} → ${d.after ?? "–"}`, d.dry_run ? "dry run" : d.outcome, d.reason];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i === cells.length - 1) td.className = "reason";
      tr.appendChild(td);
    });
    return tr;
  }));
  document.getElementById("status").textContent = `updated ${new Date(snap.generated_at * 1000).toLocaleTimeString()}`;
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

const events = new EventSource(`/api/services/${encodeURIComponent(service)}/events`);
events.onmessage = e => render(JSON.parse(e.data));
events.addEventListener("error", e => {
  document.getElementById("status").textContent = e.data ? `error: ${e.data}` : "reconnecting…";
});
