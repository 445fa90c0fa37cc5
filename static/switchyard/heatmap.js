/* Heatmap page: per-GPU heatmap of the chosen metric (gpu:<metric>) beside the per-node heatmap (node:default).
 * The current states are exposed as window.switchyardHeatmap = {gpu, node} for browser tests and the console.
 */
(function () {
  "use strict";
  const live = SwitchyardLive.connect();
  const select = document.getElementById("metric");
  const gpuEl = document.getElementById("gpu-heatmap");
  const nodeEl = document.getElementById("node-heatmap");
  const summary = document.getElementById("heatmap-summary");
  const current = window.switchyardHeatmap = {gpu: null, node: null};

  const UNIT = {
    percent: "%", celsius: "°C", watts: "W", bytes: "B", bytes_per_second: "B/s", megahertz: "MHz", joules: "J",
    seconds: "s", milliseconds: "ms", tokens_per_second: "tok/s", requests_per_second: "req/s",
  };
  const SI_UNITS = new Set(["bytes", "bytes_per_second", "joules"]);
  const SHORT = {
    cpu_util_pct: "CPU", disk_busy_pct: "disk busy", requests_waiting: "queue", kv_cache_usage_pct: "KV cache",
    prefix_cache_hit_pct: "prefix hits", net_rtt_ms: "RTT",
  };
  // Cool when idle, hot when busy: reads at a glance from across the room.
  const COLORS = [[0, "#1a4d7a"], [0.35, "#2e9e6a"], [0.65, "#e8c547"], [0.85, "#f08a24"], [1, "#e0312b"]];
  const STALE_COLOR = "#3a3f48";
  const THEME = {paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#171b22", font: {color: "#e6e9ef", size: 11}};

  function si(v) {
    const a = Math.abs(v);
    for (const [f, p] of [[1e15, "P"], [1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
      if (a >= f) return (v / f).toFixed(a / f >= 100 ? 0 : 1) + " " + p;
    }
    return (Number.isInteger(v) ? String(v) : v.toFixed(2)) + " ";
  }

  function fmt(v, unit) {
    if (v == null) return "no live value";
    const u = UNIT[unit] || "";
    if (SI_UNITS.has(unit)) return si(v) + u;
    if (unit === "bitmask") return "0x" + Math.round(v).toString(16);
    const n = Number.isInteger(v) ? String(v) : (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(Math.abs(v) < 1 ? 3 : 1));
    return u ? n + (u === "%" || u === "°C" ? "" : " ") + u : n;
  }

  function age(row) {
    const a = live.ageOf(row.ts);
    return a == null ? "never reported" : a.toFixed(0) + " s ago";
  }

  function label(row) { return row.status === "up" ? row.node : row.node + " · " + row.status; }

  /** Lines between pools and the pool's name at the top of its block. */
  function poolMarks(rows) {
    const shapes = [], annotations = [];
    let start = 0;
    for (let i = 0; i <= rows.length; i++) {
      if (i < rows.length && rows[i].pool === rows[start].pool) continue;
      annotations.push({xref: "paper", x: 1, xanchor: "right", yref: "y", y: start - 0.5, yanchor: "bottom",
                        text: rows[start].pool, showarrow: false, font: {size: 10, color: "#8b93a3"}});
      if (i < rows.length) {
        shapes.push({type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: i - 0.5, y1: i - 0.5,
                     line: {color: "#8b93a3", width: 1}});
      }
      start = i;
    }
    return {shapes, annotations};
  }

  function height(rows) {
    const fit = window.innerHeight - 170;
    return Math.max(360, Math.min(rows * 18 + 90, Math.max(fit, 360)));
  }

  function layoutFor(state, extra) {
    const marks = poolMarks(state.rows);
    return Object.assign({}, THEME, {
      height: height(state.rows.length),
      margin: {l: 150, r: 20, t: 64, b: 20},
      yaxis: {type: "category", autorange: "reversed", automargin: true, tickfont: {size: 10}},
      shapes: marks.shapes, annotations: marks.annotations,
      datarevision: state.seq,
      hoverlabel: {bgcolor: "#0f1217"},
    }, extra);
  }

  function staleTrace(state, x, y) {
    return {type: "heatmap", x, y, z: state.rows.map((r) => state.columns.map(() => (r.status === "up" ? null : 1))),
            zmin: 0, zmax: 1, colorscale: [[0, STALE_COLOR], [1, STALE_COLOR]], showscale: false,
            hoverinfo: "skip", xgap: 1, ygap: state.rows.length < 150 ? 1 : 0};
  }

  function drawGpu(state) {
    const y = state.rows.map(label);
    const x = state.columns.map((c) => "GPU " + c);
    const ages = state.rows.map(age);
    const text = state.z.map((row, i) => row.map((v) => (state.rows[i].status === "up" ? fmt(v, state.unit) : "stale — no live value")));
    const customdata = state.rows.map((r, i) => state.columns.map(() => ages[i]));
    const main = {
      type: "heatmap", x, y, z: state.z, zmin: state.zmin, zmax: state.zmax, colorscale: COLORS, text, customdata,
      hovertemplate: "<b>%{y}</b> · %{x}<br>" + state.metric + ": %{text}<br>sample %{customdata}<extra></extra>",
      colorbar: {title: {text: UNIT[state.unit] || state.unit, side: "right"}, thickness: 12,
                 tickformat: SI_UNITS.has(state.unit) ? ".2s" : ""},
      xgap: 1, ygap: state.rows.length < 150 ? 1 : 0, hoverongaps: true,
    };
    Plotly.react(gpuEl, [staleTrace(state, x, y), main], layoutFor(state, {
      title: {text: state.metric + " (" + (UNIT[state.unit] || state.unit) + ")", font: {size: 13}, x: 0.01,
              yref: "container", y: 0.995, yanchor: "top"},
      xaxis: {type: "category", side: "top", tickfont: {size: 10}},
      uirevision: "gpu:" + state.metric,
    }), SwitchyardCharts.config(`switchyard-${state.topic.replace(':', '-')}`,
      () => `/api/v1/live/${encodeURIComponent(state.topic)}`));
    gpuEl.dataset.seq = String(state.seq);
    bindClick(gpuEl, "gpu");
  }

  function drawNode(state) {
    const y = state.rows.map(label);
    const x = state.columns.map((c) => SHORT[c] || c);
    const ages = state.rows.map(age);
    const text = state.raw.map((row, i) => row.map((v, j) => (state.rows[i].status === "up" ? fmt(v, state.units[j]) : "stale — no live value")));
    const customdata = state.rows.map((r, i) => state.columns.map(() => ages[i]));
    const main = {
      type: "heatmap", x, y, z: state.z, zmin: 0, zmax: 1, colorscale: COLORS, text, customdata, showscale: false,
      hovertemplate: "<b>%{y}</b><br>%{x}: %{text}<br>sample %{customdata}<extra></extra>",
      xgap: 1, ygap: state.rows.length < 150 ? 1 : 0, hoverongaps: true,
    };
    Plotly.react(nodeEl, [staleTrace(state, x, y), main], layoutFor(state, {
      title: {text: "per node (each column on its own scale)", font: {size: 13}, x: 0.01,
              yref: "container", y: 0.995, yanchor: "top"},
      xaxis: {type: "category", side: "top", tickfont: {size: 10}},
      uirevision: state.topic,
    }), SwitchyardCharts.config(`switchyard-${state.topic.replace(':', '-')}`,
      () => `/api/v1/live/${encodeURIComponent(state.topic)}`));
    nodeEl.dataset.seq = String(state.seq);
    bindClick(nodeEl, "node");
  }

  function bindClick(el, which) {
    if (el.dataset.clickBound) return;
    el.dataset.clickBound = "1";
    el.on("plotly_click", (ev) => {
      const state = current[which];
      const p = ev.points && ev.points[0];
      if (!state || !p) return;
      const i = Array.isArray(p.pointIndex) ? p.pointIndex[0] : p.pointNumber[0];
      const row = state.rows[i];
      if (row) window.location.href = "/nodes/" + encodeURIComponent(row.node) + "/";
    });
  }

  function summarize() {
    const s = current.gpu || current.node;
    if (!s) return;
    const counts = {up: 0, stale: 0, down: 0};
    for (const r of s.rows) counts[r.status] += 1;
    summary.textContent = s.rows.length + " nodes · " + counts.up + " up · " + counts.stale + " stale · " +
      counts.down + " down";
  }

  let gpuTopic = null;
  let offGpu = null;
  function watchMetric(metric) {
    if (offGpu) offGpu();
    gpuTopic = "gpu:" + metric;
    select.dataset.metric = metric;
    gpuEl.dataset.topic = gpuTopic;
    current.gpu = null;
    offGpu = live.subscribe(gpuTopic, (state) => {
      if (state.topic !== gpuTopic) return;
      current.gpu = state;
      drawGpu(state);
      summarize();
    });
  }

  select.addEventListener("change", () => {
    const metric = select.value;
    const url = new URL(window.location.href);
    url.searchParams.set("metric", metric);
    history.replaceState(null, "", url);
    watchMetric(metric);
  });
  watchMetric(select.dataset.metric || select.value);
  live.subscribe("node:default", (state) => { current.node = state; drawNode(state); summarize(); });

  // Ages in the hover text move on even when no sample arrives.
  setInterval(() => {
    if (current.gpu) drawGpu(current.gpu);
    if (current.node) drawNode(current.node);
  }, 5000);
})();
