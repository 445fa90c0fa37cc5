/* SwitchyardCharts: what every Plotly chart of the dashboard shares — the page theme and the mode bar with PNG and
 * CSV export. CSV comes from the same API call as the chart (the chart's URL with format=csv), so it holds exactly
 * what was drawn.
 *
 *   Plotly.react(div, traces, SwitchyardCharts.layout({...}), SwitchyardCharts.config("overview-gpu", () => url));
 */
(function () {
  "use strict";
  const CSV_ICON = {width: 1000, height: 1000,
    path: "M150 100h500l200 200v600H150zM600 150v200h200M250 500h500v60H250zm0 150h500v60H250zm0 150h350v60H250z"};

  function csvUrl(url) {
    const u = new URL(url, location.href);
    u.searchParams.set("format", "csv");
    return u.pathname + u.search;
  }

  window.SwitchyardCharts = {
    csvUrl,
    /** Dark theme shared by the pages; `extra` is merged on top (axes are merged one level deep). */
    layout(extra) {
      const base = {
        paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: {color: "#e6e9ef", size: 11},
        margin: {l: 56, r: 12, t: 8, b: 28}, hovermode: "x unified",
        legend: {orientation: "h", y: -0.22, font: {size: 10}},
        xaxis: {type: "date", gridcolor: "#2a303b"}, yaxis: {gridcolor: "#2a303b", rangemode: "tozero"},
      };
      const out = Object.assign({}, base, extra || {});
      for (const k of ["xaxis", "yaxis"]) if (extra && extra[k]) out[k] = Object.assign({}, base[k], extra[k]);
      return out;
    },
    /** Mode bar with "download PNG" (named `name`) and "download CSV" (from dataUrl(), the chart's API call). */
    config(name, dataUrl) {
      const buttons = [];
      if (dataUrl) {
        buttons.push({name: "Download data as CSV", icon: CSV_ICON, click: () => {
          const a = document.createElement("a");
          a.href = csvUrl(dataUrl());
          a.download = name + ".csv";
          document.body.appendChild(a);
          a.click();
          a.remove();
        }});
      }
      return {displayModeBar: "hover", displaylogo: false, responsive: true,
        modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d", "toggleSpikelines"],
        modeBarButtonsToAdd: buttons, toImageButtonOptions: {format: "png", filename: name, scale: 1}};
    },
  };
})();
