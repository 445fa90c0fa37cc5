// The scaling page's forecast chart: forecast versus actual demand of the chosen pool, from
// GET /api/v1/scaling/pools/<pool>/forecast/ (refreshed every 30 s).
(function () {
  "use strict";
  const select = document.getElementById("forecast-pool");
  const chart = document.getElementById("forecast-chart");
  const mape = document.getElementById("forecast-mape");
  if (!select || !chart) return;

  async function draw() {
    const pool = select.value;
    let doc;
    try {
      const resp = await fetch(`/api/v1/scaling/pools/${encodeURIComponent(pool)}/forecast/?hours=6`,
                               {credentials: "same-origin"});
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      doc = await resp.json();
    } catch (err) {
      mape.textContent = `forecast unavailable: ${err.message}`;
      return;
    }
    mape.textContent = doc.mape === null ? "MAPE: not enough history yet" : `MAPE: ${doc.mape.toFixed(1)} %`;
    const unit = doc.metric === "request_rate" ? "req/s" : "queued";
    Plotly.react(chart, [
      {x: doc.actual.map(p => p.ts), y: doc.actual.map(p => p.value), name: "actual", mode: "lines"},
      {x: doc.forecast.map(p => p.ts), y: doc.forecast.map(p => p.value), name: "forecast", mode: "lines",
       line: {dash: "dot"}},
    ], {margin: {t: 10, r: 10, b: 40, l: 50}, yaxis: {title: `${doc.metric} (${unit})`, rangemode: "tozero"},
        legend: {orientation: "h"}, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
        font: {color: "#e6e9ef", size: 11}},
        SwitchyardCharts.config(`switchyard-${pool}-forecast`,
                                () => `/api/v1/scaling/pools/${encodeURIComponent(pool)}/forecast/?hours=6`));
  }

  select.addEventListener("change", draw);
  draw();
  setInterval(draw, 30000);
})();
