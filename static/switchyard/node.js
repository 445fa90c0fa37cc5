/* Node page: draws every chart from /api/v1/nodes/<name>/history, then follows the node live.
 *
 * Live tail: with window.SwitchyardLive (static/switchyard/live.js) each new raw sample of the node is appended to
 * the charts with Plotly.extendTraces and points older than the range are dropped. Without it the page polls the
 * history endpoint instead (every 5 s for the 15 m range, every minute for longer ones).
 *
 * Hooks for tests and for anyone poking at the page: window.switchyardNode.charts[<chart id>] is the number of
 * points drawn on that chart; .source / .step say which table fed it; .mode is "live", "poll" or "loading".
 */
(function () {
  "use strict";

  const cfg = JSON.parse(document.getElementById("node-page").textContent);
  const PALETTE = ["#4aa3ff", "#3fb950", "#d29922", "#f85149", "#bc8cff", "#39c5cf", "#ff9bce", "#e3b341",
    "#8b949e", "#56d364", "#79c0ff", "#ffa657", "#d2a8ff", "#a5d6ff", "#7ee787", "#ff7b72"];
  const DASH = ["solid", "dot", "dash"];
  const LABEL = {
    gpu_util_pct: "util", fb_used_bytes: "used", power_w: "power", power_limit_w: "limit", temp_c: "core",
    mem_temp_c: "HBM", sm_clock_mhz: "SM", mem_clock_mhz: "memory", cpu_util_pct: "CPU", cpu_iowait_pct: "iowait",
    load1: "load1", mem_used_bytes: "used", mem_available_bytes: "available", swap_used_bytes: "swap",
    disk_busy_pct: "busy", disk_read_bytes_s: "read", disk_write_bytes_s: "write", net_rx_bytes_s: "rx",
    net_tx_bytes_s: "tx", net_rtt_ms: "RTT", requests_running: "running", requests_waiting: "waiting",
    kv_cache_usage_pct: "KV cache", prefix_cache_hit_pct: "hits", ttft_p50_s: "p50", ttft_p95_s: "p95", generation_tokens_s: "generated",
    prompt_tokens_s: "prompt", e2e_p95_s: "p95",
  };
  const AXIS = {  // per unit: y-axis suffix, tick format, hover format when it differs, fixed range
    percent: {suffix: " %", format: ".0f", hover: ".1f", range: [0, 100]},
    bytes: {suffix: "B", format: ".3~s"},
    bytes_per_second: {suffix: "B/s", format: ".3~s"},
    watts: {suffix: " W", format: ".0f"},
    celsius: {suffix: " °C", format: ".0f"},
    megahertz: {suffix: " MHz", format: ".0f"},
    milliseconds: {suffix: " ms", format: ".1f"},
    seconds: {suffix: " s", format: ".3~g"},
    tokens_per_second: {suffix: " tok/s", format: ".3~s"},
    count: {suffix: "", format: ".0f"},
    load: {suffix: "", format: ".2f"},
  };
  const SOURCE_WORDS = {raw: "raw samples", "1m": "1m rollup", "1h": "1h rollup"};

  const state = {
    node: cfg.node, range: cfg.range, source: cfg.source, step: cfg.step, mode: "loading",
    charts: {}, samples: 0, lastTs: null, lastSeen: null, loads: 0, error: null,
  };
  window.switchyardNode = state;

  let data = null;     // the last history response, extended by live samples
  const keys = {};     // chart id -> [{metric, gpu}] per trace, in trace order (null for the event marker trace)
  let events = [];
  let throttle = [];
  let nodeActions = [];  // drains, cordons, uncordons, joins, removals (from the audit)
  const ACTION_COLOR = {drain: "#f85149", cordon: "#d29922", uncordon: "#3fb950", join: "#4aa3ff", remove: "#8b93a3"};

  function t(x) { return Date.parse(x); }
  function el(id) { return document.getElementById(id); }
  function text(node, value) { node.textContent = value; }
  function fmtTime(iso) {
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString(undefined, {hour12: false});
  }

  function layoutFor(chart, shapes) {
    const axis = AXIS[chart.unit] || {suffix: "", format: ".3~g"};
    const end = state.lastTs ? new Date(Math.max(Date.now(), state.lastTs)) : new Date();
    return {
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: {color: "#e6e9ef", size: 11},
      margin: {l: 64, r: 12, t: 8, b: 32}, height: 240, showlegend: true, hovermode: "x unified",
      legend: {orientation: "h", y: -0.18, font: {size: 10}},
      xaxis: {type: "date", gridcolor: "#2a303b", range: [new Date(end - cfg.range_seconds * 1000), end]},
      yaxis: {gridcolor: "#2a303b", ticksuffix: axis.suffix, tickformat: axis.format, rangemode: "tozero",
        range: axis.range, autorange: axis.range ? false : true},
      shapes: shapes || [],
    };
  }

  // A lone point draws nothing in "lines" mode: show markers until there are enough points to see a line.
  function modeFor(xs) { return xs.length <= 60 ? "lines+markers" : "lines"; }

  function tracesFor(chart) {
    const traces = [];
    const k = [];
    const axis = AXIS[chart.unit] || {suffix: "", format: ".3~g"};
    const hover = `%{y:${axis.hover || axis.format}}${axis.suffix}`;
    if (chart.scope === "gpu") {
      chart.metrics.forEach((metric, mi) => {
        data.gpu_series.forEach((g) => {
          traces.push({
            type: "scatter", mode: modeFor(g.t), marker: {size: 4}, x: g.t.slice(), y: g.series[metric].slice(),
            name: `GPU ${g.index}` + (chart.metrics.length > 1 ? ` ${LABEL[metric] || metric}` : ""),
            legendgroup: `gpu${g.index}`, hovertemplate: hover,
            line: {color: PALETTE[g.index % PALETTE.length], width: mi ? 1 : 1.6, dash: DASH[mi % DASH.length]},
          });
          k.push({metric: metric, gpu: g.index});
        });
      });
    } else {
      const s = data.node_series;
      chart.metrics.forEach((metric, mi) => {
        traces.push({
          type: "scatter", mode: modeFor(s.t), marker: {size: 4}, x: s.t.slice(), y: s.series[metric].slice(),
          name: LABEL[metric] || metric, hovertemplate: hover,
          line: {color: PALETTE[mi % PALETTE.length], width: 1.6},
        });
        k.push({metric: metric, gpu: null});
      });
    }
    if (chart.id === "gpu-util" && events.length) {
      // XID/ECC events as markers along the top of the utilisation chart; details in the table below.
      traces.push({
        type: "scatter", mode: "markers", name: "events", x: events.map((e) => e.ts), y: events.map(() => 100),
        text: events.map((e) => `GPU ${e.gpu}: ${e.text}`), hovertemplate: "%{text}<extra></extra>",
        marker: {symbol: "x", size: 10, color: "#f85149"},
      });
      k.push(null);
    }
    keys[chart.id] = k;
    return traces;
  }

  // What happened to the GPUs and the node, on every chart's time axis: throttle intervals shaded (GPU charts),
  // XIDs as red dotted lines, drains / cordons / uncordons as labelled lines whose label hovers who and why.
  function throttleShapes(chart) {
    const shapes = [];
    if (chart.scope === "gpu") {
      // Shade the intervals a GPU was held back for a reason other than being idle.
      throttle.filter((i) => i.mask & ~1).slice(-200).forEach((i) => shapes.push({
        type: "rect", xref: "x", yref: "paper", x0: i.from, x1: i.to, y0: 0, y1: 1, layer: "below",
        fillcolor: "rgba(210,153,34,0.18)", line: {width: 0}, name: "throttle",
      }));
    }
    events.filter((e) => e.kind === "xid").slice(-100).forEach((e) => shapes.push({
      type: "line", xref: "x", yref: "paper", x0: e.ts, x1: e.ts, y0: 0, y1: 1, name: "xid",
      line: {color: "#f85149", width: 1, dash: "dot"},
    }));
    nodeActions.slice(-100).forEach((a) => shapes.push({
      type: "line", xref: "x", yref: "paper", x0: a.ts, x1: a.ts, y0: 0, y1: 1, name: "node-" + a.action,
      line: {color: ACTION_COLOR[a.action] || "#8b93a3", width: 1.5, dash: "dash"},
    }));
    return shapes;
  }

  function actionLabels() {
    return nodeActions.slice(-100).map((a) => ({
      x: a.ts, xref: "x", y: 1, yref: "paper", yanchor: "bottom", showarrow: false, text: a.action,
      font: {size: 9, color: ACTION_COLOR[a.action] || "#8b93a3"},
      hovertext: `${a.action} by ${a.actor}: ${a.reason}`, name: "node-action",
    }));
  }

  function countPoints(id) {
    const gd = el(`chart-${id}`);
    let n = 0;
    (gd.data || []).forEach((tr, i) => { if (keys[id][i]) n += (tr.x || []).length; });
    state.charts[id] = n;
  }

  function drawChart(chart) {
    const gd = el(`chart-${chart.id}`);
    if (!gd) return;
    const layout = layoutFor(chart, throttleShapes(chart));
    layout.annotations = actionLabels();
    if (layout.annotations.length) layout.margin = Object.assign({}, layout.margin, {t: 18});  // room for the labels
    Plotly.react(gd, tracesFor(chart), layout, SwitchyardCharts.config(
      `switchyard-${cfg.node}-${chart.id}-${state.range}`, () => `${cfg.history_url}?range=${encodeURIComponent(state.range)}`));
    countPoints(chart.id);
  }

  function drawAll() { cfg.charts.forEach(drawChart); }

  function row(cells) {
    const tr = document.createElement("tr");
    cells.forEach((c) => {
      const td = document.createElement("td");
      td.textContent = c;
      tr.appendChild(td);
    });
    return tr;
  }

  function renderTables() {
    const showIdle = el("show-idle").checked;
    const tbody = el("throttle-table").tBodies[0];
    tbody.replaceChildren();
    const shown = throttle.filter((i) => showIdle || i.mask & ~1).slice().reverse();
    shown.slice(0, 500).forEach((i) => tbody.appendChild(row([`GPU ${i.gpu}`, fmtTime(i.from), fmtTime(i.to),
      i.reasons.join(", ")])));
    if (!shown.length) tbody.appendChild(row(["none in this range"]));
    const ebody = el("event-table").tBodies[0];
    ebody.replaceChildren();
    events.slice().reverse().slice(0, 500).forEach((e) => {
      const tr = row([fmtTime(e.ts), `GPU ${e.gpu}`, e.text]);
      tr.dataset.kind = e.kind;
      ebody.appendChild(tr);
    });
    if (!events.length) ebody.appendChild(row(["none in this range"]));
    const abody = el("node-action-table").tBodies[0];
    abody.replaceChildren();
    nodeActions.slice().reverse().slice(0, 200).forEach((a) => {
      const tr = row([fmtTime(a.ts), a.action, a.actor, a.reason]);
      tr.dataset.action = a.action;
      abody.appendChild(tr);
    });
    if (!nodeActions.length) abody.appendChild(row(["none in this range"]));
  }

  function showLastSeen(iso) {
    state.lastSeen = Math.max(state.lastSeen || 0, t(iso));
    iso = new Date(state.lastSeen).toISOString();
    const node = el("node-last-seen");
    const age = Math.max(0, Math.round((Date.now() - t(iso)) / 1000));
    node.setAttribute("datetime", iso);
    text(node, `${fmtTime(iso)} (${age < 120 ? `${age} s` : age < 7200 ? `${Math.round(age / 60)} min`
      : `${Math.round(age / 3600)} h`} ago)`);
  }

  function showSource() {
    const badge = el("history-source");
    badge.dataset.source = state.source;
    badge.dataset.step = state.step;
    text(badge, `${SOURCE_WORDS[state.source] || state.source}, ${state.step} s per point`);
  }

  function newestTs(body) {
    let newest = null;
    const consider = (arr) => { if (arr.length) newest = Math.max(newest || 0, t(arr[arr.length - 1])); };
    consider(body.node_series.t);
    body.gpu_series.forEach((g) => consider(g.t));
    return newest;
  }

  async function load() {
    try {
      const resp = await fetch(`${cfg.history_url}?range=${encodeURIComponent(state.range)}`,
        {headers: {Accept: "application/json"}, credentials: "same-origin"});
      const body = await resp.json();
      if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
      data = body;
      events = body.events;
      throttle = body.throttle;
      nodeActions = body.node_actions || [];
      state.source = body.source;
      state.step = body.step;
      state.lastTs = Math.max(state.lastTs || 0, newestTs(body) || 0) || null;
      if (body.last_seen) showLastSeen(body.last_seen);
      if (body.status) setStatus(body.status);
      state.loads += 1;
      state.error = null;
      showSource();
      renderTables();
      drawAll();
    } catch (err) {
      state.error = String(err);
      text(el("tail-mode"), `history failed to load: ${err}`);
    }
  }

  // --- live tail -------------------------------------------------------------------------------------------

  function valueOf(sample, k) {
    if (k.gpu !== null) {
      const g = (sample.gpus || []).find((x) => x.index === k.gpu);
      return g && g[k.metric] !== undefined ? g[k.metric] : null;
    }
    const host = sample.host || {};
    const inf = sample.inference || {};
    const v = k.metric in host ? host[k.metric] : inf[k.metric];
    return v === undefined ? null : v;
  }

  function appendToModel(sample) {
    // Keep `data` in step with the charts so a later full redraw (a new GPU, a resize) shows the tail too.
    const s = data.node_series;
    s.t.push(sample.ts);
    Object.keys(s.series).forEach((m) => s.series[m].push(valueOf(sample, {metric: m, gpu: null})));
    let structural = false;
    (sample.gpus || []).forEach((g) => {
      let mine = data.gpu_series.find((x) => x.index === g.index);
      if (!mine) {
        mine = {index: g.index, t: [], series: {}};
        Object.keys(data.units).forEach((m) => { if (m in g) mine.series[m] = []; });
        data.gpu_series.push(mine);
        data.gpu_series.sort((a, b) => a.index - b.index);
        structural = true;
      }
      mine.t.push(sample.ts);
      Object.keys(mine.series).forEach((m) => mine.series[m].push(g[m] === undefined ? null : g[m]));
    });
    const cutoff = t(sample.ts) - cfg.range_seconds * 1000;
    const trim = (obj) => {
      let drop = 0;
      while (drop < obj.t.length && t(obj.t[drop]) < cutoff) drop += 1;
      if (!drop) return;
      obj.t.splice(0, drop);
      Object.keys(obj.series).forEach((m) => obj.series[m].splice(0, drop));
    };
    trim(s);
    data.gpu_series.forEach(trim);
    return structural;
  }

  function reasonsOf(mask) {
    // The bit -> word table comes from the server's catalogue (CLOCK_EVENT_REASONS), so the two never disagree.
    if (!mask) return [];
    return Object.entries(cfg.clock_reasons).filter(([bit]) => mask & Number(bit)).map(([, word]) => word);
  }

  function noteEvents(sample, prevTs) {
    let changed = false;
    (sample.gpus || []).forEach((g) => {
      const mask = Number(g.clocks_event_reasons) || 0;
      if (mask) {
        // Extend the GPU's open interval when the reasons are the same as at the previous sample, else open one.
        let last = null;
        for (let i = throttle.length - 1; i >= 0; i -= 1) if (throttle[i].gpu === g.index) { last = throttle[i]; break; }
        if (last && last.mask === mask && prevTs && t(last.to) >= prevTs) {
          last.to = sample.ts;
        } else {
          throttle.push({gpu: g.index, from: sample.ts, to: sample.ts, mask: mask, reasons: reasonsOf(mask)});
        }
        changed = true;
      }
      if (g.xid_count) {
        events.push({ts: sample.ts, gpu: g.index, kind: "xid", value: g.xid_count, code: g.xid_last,
          text: `XID ${g.xid_last == null ? "?" : g.xid_last} ×${g.xid_count}`});
        changed = true;
      }
      const chip = document.querySelector(`.gpu-chip[data-gpu="${g.index}"] .gpu-reasons`);
      const words = reasonsOf(g.clocks_event_reasons);
      if (chip) chip.textContent = words.length ? `: ${words.join(", ")}` : "";
    });
    // Events and throttle intervals that fell out of the range leave with the points.
    const cutoff = t(sample.ts) - cfg.range_seconds * 1000;
    const keptEvents = events.filter((e) => t(e.ts) >= cutoff);
    const keptThrottle = throttle.filter((i) => t(i.to) >= cutoff);
    if (keptEvents.length !== events.length || keptThrottle.length !== throttle.length) changed = true;
    events = keptEvents;
    throttle = keptThrottle;
    if (changed) renderTables();
    return changed;
  }

  function setStatus(value) {
    const status = el("node-status");
    if (status.dataset.status === value) return;
    status.className = `badge node-status status-${value}`;
    status.dataset.status = value;
    text(status, value);
  }

  function onTail(msg) {
    // live.js hands over the sample itself; a whole tail frame ({status, sample}) is accepted too.
    if (msg && typeof msg === "object" && "sample" in msg) {
      onSample(msg.sample, msg.status);
    } else {
      onSample(msg, null);
    }
  }

  function onSample(sample, status) {
    if (status) setStatus(status);
    if (!sample || !sample.ts || !data) return;
    const ts = t(sample.ts);
    if (isNaN(ts) || (state.lastTs && ts <= state.lastTs)) return;  // a sample the charts already hold
    const prevTs = state.lastTs;
    state.lastTs = ts;
    state.samples += 1;
    const structural = appendToModel(sample);
    showLastSeen(sample.ts);
    if (!status && Date.now() - ts < cfg.interval_s * 3000) setStatus("up");
    const eventsChanged = noteEvents(sample, prevTs);
    if (structural) { drawAll(); return; }
    const cutoff = ts - cfg.range_seconds * 1000;
    cfg.charts.forEach((chart) => {
      const gd = el(`chart-${chart.id}`);
      const k = keys[chart.id] || [];
      const idx = [];
      const xs = [];
      const ys = [];
      const keep = [];
      k.forEach((key, i) => {
        if (!key) return;
        const tr = gd.data[i];
        let stale = 0;
        while (stale < tr.x.length && t(tr.x[stale]) < cutoff) stale += 1;
        idx.push(i);
        xs.push([sample.ts]);
        ys.push([valueOf(sample, key)]);
        keep.push(tr.x.length + 1 - stale);
      });
      if (!idx.length) return;
      Plotly.extendTraces(gd, {x: xs, y: ys}, idx, {x: keep, y: keep});
      // Up to now, not to the sample: a drain or an event after the node's last sample must stay on the axis.
      const end = Math.max(Date.now(), ts);
      Plotly.relayout(gd, {"xaxis.range": [new Date(end - cfg.range_seconds * 1000), new Date(end)]});
      countPoints(chart.id);
    });
    if (eventsChanged) drawAll();  // throttle shading and XID lines are on every chart
  }

  function watchStale() {
    // The header says "stale" on its own once the node misses pushes, as the fleet pages do.
    setInterval(() => {
      if (!state.lastSeen) return;
      const age = (Date.now() - state.lastSeen) / 1000;
      if (age > cfg.interval_s * 3 && el("node-status").dataset.status === "up") setStatus("stale");
      showLastSeen(new Date(state.lastSeen).toISOString());
    }, 1000);
  }

  function startTail() {
    const Live = window.SwitchyardLive;
    if (Live && typeof Live.connect === "function") {
      try {
        const live = Live.connect();
        if (live && typeof live.subscribe === "function") {
          live.subscribe(`tail:${cfg.node}`, onTail);
          state.mode = "live";
          text(el("tail-mode"), "live tail");
          return;
        }
      } catch (err) {
        console.warn("switchyard: live tail unavailable, polling instead", err);
      }
    }
    state.mode = "poll";
    const every = state.range === "15m" ? 5000 : 60000;
    text(el("tail-mode"), `refreshing every ${every / 1000} s`);
    setInterval(load, every);
  }

  el("show-idle").addEventListener("change", renderTables);
  const seen = el("node-last-seen").getAttribute("datetime");
  if (seen) showLastSeen(seen);
  load().then(() => { startTail(); watchStale(); });
})();
