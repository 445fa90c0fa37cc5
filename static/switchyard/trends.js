/* Overview trends: the fleet over a range from GET /api/v1/overview/trends (one call per range), with the audit's
 * policy activations, rollbacks, canary verdicts and scaling actions as vertical markers (hover: who and why).
 * The last point follows the websocket's kpi topic between refreshes; the whole range is refetched every minute.
 */
(function () {
  "use strict";
  const root = document.getElementById("trends");
  if (!root) return;
  const API = "/api/v1/overview/trends";
  const REFRESH_MS = 60000;
  const LIVE_DRAW_MS = 5000;

  // panel id -> traces: [series name, legend name]; y: axis settings.
  const PANELS = {
    gpu: {traces: [["gpu_util_mean", "mean"], ["gpu_util_max", "max"]], y: {range: [0, 100], ticksuffix: "%"}},
    requests: {traces: [["requests_s", "requests/s"], ["rejected_429_s", "429s/s"]], y: {}},
    latency: {traces: [["ttft_p95_s", "TTFT p95"], ["e2e_p95_s", "end-to-end p95"]], y: {ticksuffix: " s"}},
    queue: {traces: [["queue", "waiting"]], y: {}},
    power: {traces: [["power_kw", "kW"]], y: {ticksuffix: " kW"}},
    energy: {traces: [["energy_per_token_j", "J/token"]], y: {ticksuffix: " J"}},
  };
  const COLORS = ["#4aa3ff", "#f0883e"];
  const MARK = {policy: "#4aa3ff", rollback: "#f85149", canary: "#d29922", scaling: "#3fb950"};

  const params = new URLSearchParams(location.search);
  let range = params.get("range") || root.querySelector(".range-picker .active").dataset.range;
  let doc = null;
  let livePoint = null;   // {t, values} from the kpi topic, drawn after the last stored point
  let lastLiveDraw = 0;
  const state = {doc: null, drawn: {}, live: null};
  window.switchyardTrends = state;

  const status = document.getElementById("trends-status");
  const csvLink = document.getElementById("trends-csv");
  const url = () => `${API}?range=${encodeURIComponent(range)}`;

  function markerTrace(markers) {
    return {
      type: "scatter", mode: "markers", name: "changes", yaxis: "y2", showlegend: false,
      x: markers.map((m) => m.ts), y: markers.map(() => 0.97),
      marker: {symbol: "triangle-down", size: 9, color: markers.map((m) => MARK[m.kind] || "#8b93a3")},
      text: markers.map((m) => `<b>${esc(m.kind)}</b>: ${esc(m.what)}<br>by ${esc(m.actor)}<br>${esc(wrap(m.reason))}`),
      hovertemplate: "%{text}<extra></extra>",
    };
  }

  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
  }
  function wrap(s) { s = String(s || ""); return s.length > 160 ? s.slice(0, 157) + "…" : s; }

  function draw(id) {
    const panel = PANELS[id];
    const gd = document.getElementById("trend-" + id);
    if (!gd || !doc) return;
    const traces = panel.traces.map(([name, legend], i) => {
      const x = doc.t.slice();
      const y = doc.series[name].slice();
      if (livePoint && livePoint.values[name] != null && (!x.length || new Date(livePoint.t) > new Date(x[x.length - 1]))) {
        x.push(livePoint.t);
        y.push(livePoint.values[name]);
      }
      return {type: "scatter", mode: x.length <= 30 ? "lines+markers" : "lines", name: legend, x, y,
              line: {color: COLORS[i], width: 1.6}, marker: {size: 4}, connectgaps: false};
    });
    const markers = doc.markers || [];
    traces.push(markerTrace(markers));
    const shapes = markers.map((m) => ({type: "line", xref: "x", yref: "paper", x0: m.ts, x1: m.ts, y0: 0, y1: 1,
                                         line: {color: MARK[m.kind] || "#8b93a3", width: 1, dash: "dot"}}));
    const end = new Date(Math.max(new Date(doc.now), livePoint ? new Date(livePoint.t) : 0));
    const layout = SwitchyardCharts.layout({
      height: 190, margin: {l: 52, r: 8, t: 6, b: 24}, shapes,
      xaxis: {range: [new Date(end - rangeSeconds() * 1000), end]},
      yaxis: Object.assign({autorange: !panel.y.range}, panel.y),
      yaxis2: {overlaying: "y", range: [0, 1], visible: false, fixedrange: true},
      legend: {orientation: "h", x: 0, y: 1.02, yanchor: "bottom", font: {size: 10}, bgcolor: "rgba(0,0,0,0)"},
    });
    Plotly.react(gd, traces, layout, SwitchyardCharts.config(`switchyard-${id}-${range}`, url));
    gd.dataset.points = String(traces[0].x.length);
    state.drawn[id] = true;
  }

  function rangeSeconds() { return doc ? (new Date(doc.to) - new Date(doc.from)) / 1000 : 3600; }

  function drawChanges() {
    const tbody = document.querySelector("#changes tbody");
    const markers = (doc.markers || []).slice().reverse();
    document.getElementById("changes-count").textContent = String(markers.length);
    const rows = markers.slice(0, 50).map((m) => {
      const tr = document.createElement("tr");
      tr.dataset.kind = m.kind;
      const when = new Date(m.ts).toLocaleString(undefined, {hour12: false});
      for (const text of [when, `${m.kind}: ${m.what}`, m.actor, m.reason]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      return tr;
    });
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.className = "none";
      tr.innerHTML = '<td colspan="4" class="muted">none</td>';
      rows.push(tr);
    }
    tbody.replaceChildren(...rows);
  }

  function drawAll() { for (const id of Object.keys(PANELS)) draw(id); }

  async function load() {
    try {
      const resp = await fetch(url(), {credentials: "same-origin", headers: {Accept: "application/json"}});
      const body = await resp.json();
      if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
      doc = state.doc = body;
      if (livePoint && new Date(livePoint.t) <= new Date(doc.t[doc.t.length - 1] || 0)) livePoint = null;
      status.textContent = doc.t.length ? `${doc.t.length} points, ${doc.step / 60} min each` :
        "no data in this range yet (the fleet's minutes fill in a minute after samples arrive)";
      drawAll();
      drawChanges();
    } catch (err) {
      status.textContent = `trends unavailable: ${err.message}`;
    }
  }

  function pick(r) {
    range = r;
    for (const b of root.querySelectorAll(".range-picker button")) b.classList.toggle("active", b.dataset.range === r);
    csvLink.href = SwitchyardCharts.csvUrl(url());
    const u = new URL(location.href);
    u.searchParams.set("range", r);
    history.replaceState(null, "", u);
    load();
  }

  root.querySelectorAll(".range-picker button").forEach((b) => b.addEventListener("click", () => pick(b.dataset.range)));

  // The websocket's kpi values, mapped onto the series they continue.
  SwitchyardLive.connect().subscribe("kpi", (s) => {
    const v = s.values;
    const live = SwitchyardLive.connect();
    const values = {
      gpu_util_mean: v.gpu_util_mean, gpu_util_max: v.gpu_util_max, queue: v.queue_total,
      ttft_p95_s: v.ttft_p95_s, power_kw: v.power_w == null ? null : v.power_w / 1000,
      energy_per_token_j: v.power_w != null && v.tokens_s > 0 ? v.power_w / v.tokens_s : null,
    };
    livePoint = state.live = {t: new Date(live.serverNow()).toISOString(), values};
    if (doc && Date.now() - lastLiveDraw >= LIVE_DRAW_MS) {
      lastLiveDraw = Date.now();
      drawAll();
    }
  });

  pick(range);
  setInterval(load, REFRESH_MS);
})();
