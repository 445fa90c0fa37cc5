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

  live.subscribe("kpi", (state) => {
    for (const tile of document.querySelectorAll("[data-kpi]")) {
      const name = tile.dataset.kpi;
      const v = state.values[name];
      const el = tile.querySelector(".value");
      el.textContent = v == null ? "—" : (format[name] ? format[name](v) : String(v));
      tile.dataset.value = v == null ? "" : String(v);
      tile.classList.toggle("warn", v != null && !!warn[name] && warn[name](v));
    }
    const upd = document.getElementById("kpi-updated");
    upd.dataset.seq = String(state.seq);
    upd.textContent = "live";
  });
})();
