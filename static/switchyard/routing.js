/* Routing page: polls /api/v1/routing/summary every 2 s and redraws tiles, the share and score charts and the tables.
 * window.switchyardRouting.loads counts successful refreshes; .summary is the last response. */
(function () {
  "use strict";

  const cfg = JSON.parse(document.getElementById("routing-config").textContent);
  const state = {loads: 0, summary: null, error: null};
  window.switchyardRouting = state;
  const windowSelect = document.getElementById("window");
  const layoutBase = {
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: {color: "#e6e9ef", size: 12},
    margin: {l: 110, r: 16, t: 34, b: 36}, xaxis: {gridcolor: "#2a303b", zerolinecolor: "#2a303b"},
    yaxis: {automargin: true, autorange: "reversed"}, legend: {orientation: "h", y: -0.15},
  };
  // PNG from the mode bar; CSV from the same summary call the charts are drawn from.
  const plotOptions = SwitchyardCharts.config("switchyard-routing",
    () => cfg.summary_url + "?window=" + encodeURIComponent(windowSelect.value));

  function ms(v) { return v == null ? "—" : (v >= 1000 ? (v / 1000).toFixed(2) + " s" : v.toFixed(1)); }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function fill(tbody, rows, cols, empty) {
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.className = "none";
      const td = cell(empty, "muted");
      td.colSpan = cols;
      tr.appendChild(td);
      tbody.replaceChildren(tr);
      return;
    }
    tbody.replaceChildren(...rows);
  }

  function drawTiles(s) {
    const t = s.totals;
    const values = {
      rps: t.rps.toFixed(t.rps >= 100 ? 0 : 1), routed: String(t.routed), status_429: String(t.status_429),
      status_5xx: String(t.status_5xx), retries: String(t.retries), quarantined_nodes: String(t.quarantined_nodes),
      cache_hit_rate: t.cache_hit_rate == null ? "—" : (100 * t.cache_hit_rate).toFixed(1),
      prefix_hit_pct: t.prefix_hit_pct == null ? "—" : t.prefix_hit_pct.toFixed(1),
    };
    const warn = {status_429: t.status_429 > 0, status_5xx: t.status_5xx > 0, quarantined_nodes: t.quarantined_nodes > 0};
    for (const tile of document.querySelectorAll("[data-tile]")) {
      const name = tile.dataset.tile;
      tile.querySelector(".value").textContent = values[name];
      tile.dataset.value = values[name];
      tile.classList.toggle("warn", !!warn[name]);
    }
  }

  function drawCharts(s) {
    const nodes = s.nodes;
    const names = nodes.map((n) => n.node);
    Plotly.react("share-plot", [{
      type: "bar", orientation: "h", y: names, x: nodes.map((n) => 100 * n.share),
      text: nodes.map((n) => n.requests + " req"), hovertemplate: "%{y}: %{x:.1f} % (%{text})<extra></extra>",
      marker: {color: "#4aa3ff"},
    }], {...layoutBase, title: {text: "Share of routed requests, %", font: {size: 13}}}, plotOptions);
    // One stacked trace per scorer: its weighted contribution to the node's score. A filtered node has no score;
    // its reason is drawn as an annotation so the gap in the chart explains itself.
    const traces = s.scorers.map((scorer) => ({
      type: "bar", orientation: "h", name: scorer, y: names,
      x: nodes.map((n) => (n.parts && n.parts[scorer] != null ? n.parts[scorer] : 0)),
      hovertemplate: scorer + " %{x:.3f}<extra>%{y}</extra>",
    }));
    const annotations = nodes.filter((n) => n.eligible === false || n.eligible == null).map((n) => ({
      x: 0, y: n.node, xanchor: "left", showarrow: false, font: {color: "#d29922", size: 11},
      text: n.eligible === false ? "filtered: " + (n.reason || "?") : (n.reason || "no score"),
    }));
    Plotly.react("score-plot", traces, {
      ...layoutBase, barmode: "relative", annotations,
      title: {text: "Score per node by scorer (freshest gateway)", font: {size: 13}},
    }, plotOptions);
  }

  function drawNodes(s) {
    const rows = s.nodes.map((n) => {
      const tr = document.createElement("tr");
      tr.dataset.node = n.node;
      const link = document.createElement("a");
      link.href = "/nodes/" + encodeURIComponent(n.node) + "/";
      link.textContent = n.node;
      const first = document.createElement("td");
      first.appendChild(link);
      tr.appendChild(first);
      const eligible = n.eligible == null ? "—" : (n.eligible ? "yes" : "filtered");
      const note = n.quarantined ? "quarantined until " + new Date(n.quarantined_until * 1000).toLocaleTimeString()
        : (n.eligible === false ? n.reason : (n.reason || ""));
      [cell(n.pool), cell((100 * n.share).toFixed(1) + " %", "num"), cell(String(n.requests), "num"),
        cell(n.score == null ? "—" : n.score.toFixed(3), "num"), cell(eligible, n.eligible === false ? "filtered" : ""),
        cell(String(n.in_flight), "num"), cell(ms(n.latency_ms.p95), "num"),
        cell(n.prefix_cache_hit_pct == null ? "—" : n.prefix_cache_hit_pct.toFixed(1) + " %", "num"),
        cell(note, n.quarantined ? "status-down" : "")]
        .forEach((td) => tr.appendChild(td));
      return tr;
    });
    fill(document.querySelector("#routing-nodes tbody"), rows, 10, "No node routed a request in this window and no gateway reports any.");
  }

  function drawClasses(s) {
    const rows = s.classes.map((c) => {
      const tr = document.createElement("tr");
      tr.dataset.class = c.class;
      [cell(c.class), cell(String(c.requests), "num"), cell(String(c.status_429), "num"), cell(String(c.retries), "num"),
        cell(ms(c.latency_ms.p50), "num"), cell(ms(c.latency_ms.p95), "num"), cell(ms(c.latency_ms.p99), "num"),
        cell(ms(c.ttft_ms.p50), "num"), cell(ms(c.ttft_ms.p95), "num"), cell(ms(c.ttft_ms.p99), "num")]
        .forEach((td) => tr.appendChild(td));
      return tr;
    });
    fill(document.querySelector("#routing-classes tbody"), rows, 10, "No requests in this window.");
  }

  async function refresh() {
    try {
      const resp = await fetch(cfg.summary_url + "?window=" + encodeURIComponent(windowSelect.value),
        {credentials: "same-origin", headers: {Accept: "application/json"}});
      if (resp.status === 401 || resp.status === 403) {
        state.error = "logged out";
        document.getElementById("routing-updated").textContent = "logged out: reload to log in";
        return;
      }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const s = await resp.json();
      state.summary = s;
      drawTiles(s);
      drawCharts(s);
      drawNodes(s);
      drawClasses(s);
      document.getElementById("routing-gateways").textContent = "gateways: " +
        (s.gateways.length ? s.gateways.map((g) => g.id + (g.saturated ? " (saturated)" : "")).join(", ") : "none live");
      document.getElementById("routing-updated").textContent = "live" + (s.truncated ? " (window cut at the newest 100k requests)" : "");
      state.loads += 1;
      state.error = null;
    } catch (err) {
      state.error = String(err);
      document.getElementById("routing-updated").textContent = "update failed: " + err.message + " (retrying)";
    }
  }

  let timer = null;
  function schedule() {
    // setTimeout after each answer (not setInterval): a slow server never gets requests piling up.
    timer = setTimeout(async () => { await refresh(); schedule(); }, cfg.every_ms);
  }
  windowSelect.addEventListener("change", () => {
    const url = new URL(window.location.href);
    url.searchParams.set("window", windowSelect.value);
    history.replaceState(null, "", url);
    clearTimeout(timer);
    refresh().then(schedule);
  });
  refresh().then(schedule);
})();
