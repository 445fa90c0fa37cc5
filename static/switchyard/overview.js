/* Fleet overview: KPI tiles fed by the `kpi` topic. Each tile is [data-kpi=<name>] with the number in .value. */
(function () {
  "use strict";
  const live = SwitchyardLive.connect();

  const format = {
    gpu_util_mean: (v) => v.toFixed(1),
    gpu_util_max: (v) => v.toFixed(1),
    ttft_p95_s: (v) => v < 10 ? v.toFixed(2) : v.toFixed(0),
    tokens_s: (v) => v >= 10000 ? (v / 1000).toFixed(1) + "k" : v.toFixed(0),
    power_w: (v) => (v / 1000).toFixed(1),  // the tile's unit is kW
  };
  // Tiles that should draw the eye when non-zero / high.
  const warn = {
    nodes_stale: (v) => v > 0, nodes_down: (v) => v > 0, gpu_util_max: (v) => v >= 95,
    alerts_active: (v) => v > 0,
  };

  // "Needs attention": nodes that are not live first, then those with the most reasons, in plain words.
  function drawAttention(items, total) {
    const body = document.querySelector("#attention tbody");
    const rows = items.map((item) => {
      const tr = document.createElement("tr");
      tr.dataset.node = item.node;
      tr.className = "status-row-" + item.status;
      const link = document.createElement("a");
      link.href = "/nodes/" + encodeURIComponent(item.node) + "/";
      link.textContent = item.node;
      const cells = [link, item.pool, item.status, null];
      cells.forEach((content, i) => {
        const td = document.createElement("td");
        if (content instanceof Node) td.appendChild(content);
        else if (i === 2) { td.textContent = content; td.className = "status-" + item.status; }
        else if (content != null) td.textContent = content;
        else {
          const why = item.status === "up" ? item.reasons.join(" · ")
            : "no sample for " + (item.ts == null ? "ever" : Math.round(live.ageOf(item.ts)) + " s");
          td.textContent = why;
        }
        tr.appendChild(td);
      });
      return tr;
    });
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.className = "none";
      tr.innerHTML = '<td colspan="4" class="muted"></td>';
      tr.firstChild.textContent = total ? "Nothing: every node is live and within limits." : "No nodes yet.";
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  live.subscribe("kpi", (state) => {
    for (const tile of document.querySelectorAll("[data-kpi]")) {
      const name = tile.dataset.kpi;
      const v = state.values[name];
      const el = tile.querySelector(".value");
      el.textContent = v == null ? "—" : (format[name] ? format[name](v) : String(v));
      tile.dataset.value = v == null ? "" : String(v);
      tile.classList.toggle("warn", v != null && !!warn[name] && warn[name](v));
    }
    drawAttention(state.values.attention || [], state.values.nodes_total || 0);
    const upd = document.getElementById("kpi-updated");
    upd.dataset.seq = String(state.seq);
    upd.textContent = "live";
  });
})();
