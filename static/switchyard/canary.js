// The canary page: analysis runs and both arms over time from GET /api/v1/policies/<kind>/canary/ (every 5 s),
// and the operator's controls (pause, resume, promote, abort; each with a reason).
(function () {
  "use strict";
  var root = document.getElementById("canary");
  if (!root) return;
  var api = root.dataset.api;
  var csrf = document.querySelector("input[name=csrfmiddlewaretoken]");
  var COLORS = {stable: "#4a90d9", canary: "#e8a33d"};

  function fmt(x, digits) { return x === null || x === undefined ? "—" : Number(x).toFixed(digits); }
  function armText(a) {
    if (!a) return "—";
    return [a.requests, fmt(a.p95_latency_ms, 0), fmt(a.p95_ttft_ms, 0), fmt(100 * a.error_rate, 1) + "%",
            fmt(100 * a.rate_429, 1) + "%", fmt(100 * a.goodput, 1) + "%"].join(" · ");
  }

  function runs(list) {
    var body = document.querySelector("#canary-runs tbody");
    if (!body) return;
    body.replaceChildren();
    list.forEach(function (r) {
      var tr = document.createElement("tr");
      tr.className = "verdict-" + r.verdict;
      [new Date(r.ts).toLocaleTimeString(), r.step + 1, r.weight + " %", r.verdict, armText(r.arms.stable) +
       (r.arms.off ? " · off periods (stable alone): " + armText(r.arms.off) : ""),
       armText(r.arms.canary), r.summary].forEach(function (text) {
        var td = document.createElement("td"); td.textContent = text; tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }

  function chart(id, title, key, scale) {
    var el = document.getElementById(id);
    if (!el || !window.Plotly) return;
    var data = [], series = root._series || {};
    ["stable", "canary"].forEach(function (arm) {
      var pts = series[arm] || [];
      data.push({x: pts.map(function (p) { return p.minute; }),
                 y: pts.map(function (p) { return p[key] === null ? null : p[key] * (scale || 1); }),
                 name: arm, mode: "lines+markers", line: {color: COLORS[arm]}});
    });
    window.Plotly.react(el, data, {title: {text: title, font: {size: 13}}, height: 240,
                                   margin: {l: 50, r: 10, t: 30, b: 30}, legend: {orientation: "h"}},
                        {displayModeBar: false, responsive: true});
  }

  function load() {
    fetch(api, {credentials: "same-origin"}).then(function (resp) {
      return resp.ok ? resp.json() : null;
    }).then(function (c) {
      if (!c) return;
      var state = document.getElementById("canary-state");
      if (state) state.textContent = c.state;
      var weight = document.getElementById("canary-weight");
      if (weight) weight.textContent = c.weight;
      runs(c.runs || []);
      root._series = c.series;
      chart("chart-latency", "p95 latency (ms), per minute", "p95_latency_ms");
      chart("chart-ttft", "p95 TTFT (ms)", "p95_ttft_ms");
      chart("chart-errors", "5xx rate (%)", "error_rate", 100);
      chart("chart-goodput", "goodput (%)", "goodput", 100);
    }).catch(function () { /* the next poll tries again */ });
  }

  // Each canary's controls (the scheduler's and the scaling canary's) act on the API their form names.
  document.querySelectorAll("form.canary-controls").forEach(function (form) {
    form.querySelectorAll("button[data-action]").forEach(function (button) {
      button.addEventListener("click", function () {
        var reason = form.querySelector(".canary-reason");
        var message = form.querySelector(".canary-message");
        if (!reason.value.trim()) { message.textContent = "a reason is required"; reason.focus(); return; }
        var action = button.dataset.action;
        if ((action === "abort" || action === "promote") && !window.confirm(action + " the canary?")) return;
        fetch(form.dataset.api + action + "/", {
          method: "POST", credentials: "same-origin",
          headers: {"Content-Type": "application/json", "X-CSRFToken": csrf ? csrf.value : ""},
          body: JSON.stringify({reason: reason.value}),
        }).then(function (resp) {
          return resp.json().then(function (body) { return {ok: resp.ok, body: body}; });
        }).then(function (r) {
          if (r.ok) { window.location.reload(); return; }
          message.textContent = r.body.error || "refused";
        });
      });
    });
  });

  // The scaling canary: its pool's two windows per analysis run.
  var scalingRoot = document.getElementById("scaling-canary");
  function windowText(w) {
    if (!w) return "—";
    return [w.minutes, w.requests, w.violation_minutes, fmt(w.gpu_hours_per_1k, 3)].join(" · ");
  }
  function loadScaling() {
    var body = document.querySelector("#scaling-canary-runs tbody");
    if (!scalingRoot || !body) return;
    fetch(scalingRoot.dataset.api, {credentials: "same-origin"}).then(function (resp) {
      return resp.ok ? resp.json() : null;
    }).then(function (c) {
      if (!c) return;
      var state = document.getElementById("scaling-canary-state");
      if (state) state.textContent = c.state;
      body.replaceChildren();
      (c.runs || []).forEach(function (r) {
        var tr = document.createElement("tr");
        tr.className = "verdict-" + r.verdict;
        [new Date(r.ts).toLocaleTimeString(), r.step + 1, r.verdict, windowText(r.arms.baseline),
         windowText(r.arms.canary), r.summary].forEach(function (text) {
          var td = document.createElement("td"); td.textContent = text; tr.appendChild(td);
        });
        body.appendChild(tr);
      });
    }).catch(function () { /* the next poll tries again */ });
  }
  loadScaling();
  setInterval(loadScaling, 5000);
  load();
  setInterval(load, 5000);
})();
