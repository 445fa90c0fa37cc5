/* The scaling page's timeline: GET /api/v1/scaling/pools/<pool>/timeline/?range= (refreshed every 30 s).
 * Chart 1: desired / actual (steps) and reporting nodes, scaling actions as markers (hover: rule, from → to, state).
 * Then one chart per rule metric with its threshold, and the forecast for predictive pools.
 */
(function () {
  "use strict";
  const root = document.getElementById("timeline");
  if (!root) return;
  const select = document.getElementById("timeline-pool");
  const status = document.getElementById("timeline-status");
  const STATE_COLOR = {done: "#3fb950", failed: "#f85149", cancelled: "#8b93a3", pending: "#d29922",
                       running: "#d29922", draining: "#d29922"};
  const params = new URLSearchParams(location.search);
  let range = params.get("timeline") || root.dataset.defaultRange;
  if (params.get("pool")) select.value = params.get("pool");
  const state = {doc: null};
  window.switchyardTimeline = state;
  const url = () => `/api/v1/scaling/pools/${encodeURIComponent(select.value)}/timeline/?range=${encodeURIComponent(range)}`;

  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
  }

  function actionMarks(doc, top) {
    const acts = doc.actions;
    return {
      trace: {type: "scatter", mode: "markers", name: "actions", x: acts.map((a) => a.ts), y: acts.map(() => top),
        marker: {symbol: "triangle-down", size: 10, color: acts.map((a) => STATE_COLOR[a.state] || "#4aa3ff")},
        text: acts.map((a) => `#${a.id} <b>${esc(a.rule)}</b>: ${a.from_size} → ${a.to_size}, ${esc(a.state)}` +
                               `<br>by ${esc(a.actor)}${a.reason ? "<br>" + esc(a.reason) : ""}`),
        hovertemplate: "%{text}<extra></extra>"},
      shapes: acts.map((a) => ({type: "line", xref: "x", yref: "paper", x0: a.ts, x1: a.ts, y0: 0, y1: 1,
                                line: {color: STATE_COLOR[a.state] || "#4aa3ff", width: 1, dash: "dot"}})),
    };
  }

  function drawNodes(doc) {
    const sizes = doc.desired.concat(doc.actual, doc.reporting).filter((v) => v != null);
    const top = Math.max(doc.min, 1, ...sizes) + 1;
    const marks = actionMarks(doc, top);
    Plotly.react("timeline-nodes", [
      {type: "scatter", mode: "lines", name: "desired", x: doc.t, y: doc.desired, line: {shape: "hv", color: "#4aa3ff"}},
      {type: "scatter", mode: "lines", name: "actual", x: doc.t, y: doc.actual, line: {shape: "hv", color: "#3fb950", dash: "dash"}},
      {type: "scatter", mode: "lines", name: "reporting", x: doc.t, y: doc.reporting, line: {shape: "hv", color: "#f0883e"}},
      marks.trace,
    ], SwitchyardCharts.layout({height: 240, shapes: marks.shapes, yaxis: {title: "nodes", range: [0, top + 0.5], dtick: top > 12 ? null : 1},
                                xaxis: {range: [doc.from, doc.to]}}),
      SwitchyardCharts.config(`switchyard-${doc.pool}-nodes-${doc.range}`, url));
  }

  function drawRules(doc) {
    const box = document.getElementById("timeline-rules");
    box.replaceChildren();
    doc.rules.forEach((r, i) => {
      const div = document.createElement("div");
      div.className = "timeline-plot";
      div.id = `timeline-rule-${i}`;
      div.dataset.metric = r.metric;
      box.appendChild(div);
      const name = `${r.metric} ${r.scale_down ? "<" : ">"} ${r.threshold}`;
      const marks = actionMarks(doc, 0);
      Plotly.react(div, [
        {type: "scatter", mode: "lines", name: r.metric, x: doc.t, y: r.values, line: {color: "#4aa3ff"}},
        {type: "scatter", mode: "lines", name: (r.scale_down ? "scale-in below " : "scale-out above ") + r.threshold,
         x: [doc.from, doc.to], y: [r.threshold, r.threshold], line: {color: r.scale_down ? "#3fb950" : "#f85149", dash: "dash"}},
      ], SwitchyardCharts.layout({height: 180, shapes: marks.shapes, yaxis: {title: r.metric},
                                  xaxis: {range: [doc.from, doc.to]}}),
        SwitchyardCharts.config(`switchyard-${doc.pool}-${r.metric}-${doc.range}`, url));
      div.setAttribute("aria-label", name);
    });
  }

  function drawForecast(doc) {
    const div = document.getElementById("timeline-forecast");
    div.hidden = !doc.forecast;
    if (!doc.forecast) return;
    const f = doc.forecast;
    Plotly.react(div, [
      {type: "scatter", mode: "lines", name: "actual " + f.metric, x: f.actual.map((p) => p.ts), y: f.actual.map((p) => p.value)},
      {type: "scatter", mode: "lines", name: "forecast", x: f.forecast.map((p) => p.ts), y: f.forecast.map((p) => p.value), line: {dash: "dot"}},
    ], SwitchyardCharts.layout({height: 200, yaxis: {title: f.metric}, xaxis: {range: [doc.from, doc.to]}}),
      SwitchyardCharts.config(`switchyard-${doc.pool}-forecast-${doc.range}`, url));
  }

  async function load() {
    try {
      const resp = await fetch(url(), {credentials: "same-origin", headers: {Accept: "application/json"}});
      const body = await resp.json();
      if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
      state.doc = body;
      drawNodes(body);
      drawRules(body);
      drawForecast(body);
      status.textContent = `${body.actions.length} action(s) in the last ${body.range}`;
    } catch (err) {
      status.textContent = `timeline unavailable: ${err.message}`;
    }
  }

  function pick(r) {
    range = r;
    for (const b of root.querySelectorAll(".range-picker button")) b.classList.toggle("active", b.dataset.range === r);
    load();
  }
  root.querySelectorAll(".range-picker button").forEach((b) => b.addEventListener("click", () => pick(b.dataset.range)));
  select.addEventListener("change", load);
  pick(range);
  setInterval(load, 30000);
})();
