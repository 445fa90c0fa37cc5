/* Pools page: re-reads /api/v1/pools/summary every 5 s and redraws the table (the server rendered the first one).
 * window.switchyardPools.loads counts successful refreshes; .summary is the last response. */
(function () {
  "use strict";

  const cfg = JSON.parse(document.getElementById("pools-config").textContent);
  const table = document.getElementById("pools-table");
  const state = {loads: 0, summary: null, error: null};
  window.switchyardPools = state;

  function num(v, digits, suffix) {
    if (v === null || v === undefined) return "—";
    return Number(v).toFixed(digits) + (suffix || "");
  }

  function zero(n) { return n ? "" : " zero"; }  // a zero count is muted so the non-zero ones stand out

  function td(content, cls, field) {
    const cell = document.createElement("td");
    if (cls) cell.className = cls;
    if (field) cell.dataset.field = field;
    if (content instanceof Node) cell.appendChild(content); else cell.textContent = content;
    return cell;
  }

  function tr(cells) {
    const row = document.createElement("tr");
    cells.forEach((c) => row.appendChild(c));
    return row;
  }

  function nodesTable(pool, open) {
    const details = document.createElement("details");
    details.open = open;
    details.dataset.pool = pool.name;
    const summary = document.createElement("summary");
    summary.className = "muted";
    summary.textContent = `${pool.nodes} node${pool.nodes === 1 ? "" : "s"}`;
    details.appendChild(summary);
    const t = document.createElement("table");
    t.className = "grid pool-nodes";
    const head = t.createTHead().insertRow();
    ["Node", "Status", "State", "GPUs", "GPU util", "Queue", "Tokens/s", "Power"].forEach((h, i) => {
      const th = document.createElement("th");
      th.textContent = h;
      if (i >= 3) th.className = "num";
      head.appendChild(th);
    });
    const body = t.createTBody();
    pool.node_list.forEach((n) => {
      const a = document.createElement("a");
      a.href = n.url;
      a.textContent = n.name;
      const row = tr([td(a), td(n.status, `status-${n.status}`), td(n.state, `state-${n.state}`),
        td(String(n.gpus), "num"), td(num(n.gpu_util_pct, 1, " %"), "num"), td(num(n.queue, 0), "num"),
        td(num(n.tokens_s, 0), "num"), td(num(n.power_w, 0, " W"), "num")]);
      row.dataset.node = n.name;
      body.appendChild(row);
    });
    if (!pool.node_list.length) {
      const empty = td("no nodes in this pool", "muted");
      empty.colSpan = 8;
      body.appendChild(tr([empty]));
    }
    details.appendChild(t);
    return details;
  }

  function render(summary) {
    // Remember which pools the operator folded, so a refresh does not unfold them.
    const closed = new Set([...table.querySelectorAll("details:not([open])")].map((d) => d.dataset.pool));
    [...table.tBodies].forEach((b) => b.remove());
    summary.pools.forEach((p) => {
      const body = table.createTBody();
      body.className = "pool";
      body.id = `pool-${p.name}`;
      body.dataset.pool = p.name;
      const head = tr([
        td(p.name), td(String(p.nodes), "num", "nodes"),
        ...["up", "stale", "down"].map((s) => td(String(p.status[s]), `num count-${s}${zero(p.status[s])}`, s)),
        ...["active", "draining", "cordoned"].map((s) => td(String(p.state[s]), `num${zero(p.state[s])}`, s)),
        td(String(p.gpus), "num", "gpus"),
        td(num(p.gpu_util_pct, 1, " %"), "num", "gpu_util_pct"), td(num(p.queue, 0), "num", "queue"),
        td(num(p.tokens_s, 0), "num", "tokens_s"), td(num(p.power_w, 0, " W"), "num", "power_w"),
      ]);
      head.className = "pool-row";
      body.appendChild(head);
      const holder = td(nodesTable(p, !closed.has(p.name)));
      holder.colSpan = 13;
      body.appendChild(tr([holder]));
    });
    if (!summary.pools.length) {
      const body = table.createTBody();
      const empty = td("No pools yet: manage.py createnode NAME --pool POOL makes one.", "muted");
      empty.colSpan = 13;
      body.appendChild(tr([empty]));
    }
    const updated = document.getElementById("pools-updated");
    updated.textContent = summary.ts;
    updated.setAttribute("datetime", summary.ts);
  }

  async function refresh() {
    try {
      const resp = await fetch(cfg.summary_url, {headers: {Accept: "application/json"}, credentials: "same-origin"});
      const body = await resp.json();
      if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
      state.summary = body;
      state.loads += 1;
      state.error = null;
      render(body);
    } catch (err) {
      // Keep the last numbers but say they are old, rather than let them pass for current.
      state.error = String(err);
      const updated = document.getElementById("pools-updated");
      updated.textContent = `${updated.getAttribute("datetime")} (refresh failed: ${state.error})`;
    }
  }

  setInterval(refresh, cfg.every_ms);
})();
