// The scheduler editor's what-if panel: the document in the editor against the active policy, on the live fleet
// (POST /api/v1/policies/scheduler/whatif/), as a table of each node's score and predicted share under both.
(function () {
  "use strict";
  var panel = document.getElementById("whatif");
  if (!panel) return;
  var area = document.getElementById("document");
  var button = document.getElementById("whatif-run");
  var out = document.getElementById("whatif-out");
  var csrf = document.querySelector("input[name=csrfmiddlewaretoken]");

  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
  }
  function pct(x) { return (100 * x).toFixed(1) + " %"; }
  function score(x) { return x === null || x === undefined ? "—" : x.toFixed(3); }

  function render(body) {
    out.replaceChildren();
    var head = document.createElement("p");
    head.id = "whatif-summary";
    head.textContent = "Next " + body.requests + " requests for " + (body.model || "any model") + ": " +
      pct(body.shift) + " of them would go to another node under your document" +
      (body.snapshot_age_s === null ? " (no samples yet)" : " · samples " + body.snapshot_age_s.toFixed(1) + " s old") +
      " · " + body.live_in_flight + " in flight now.";
    out.appendChild(head);
    var table = document.createElement("table");
    table.id = "whatif-table";
    var thead = document.createElement("tr");
    ["node", "pool", "score (active)", "share (active)", "score (yours)", "share (yours)", "filtered out"].forEach(function (h) {
      var th = document.createElement("th"); th.textContent = h; thead.appendChild(th);
    });
    table.appendChild(thead);
    var mine = {};
    body.candidate.nodes.forEach(function (n) { mine[n.node] = n; });
    body.active.nodes.forEach(function (a) {
      var c = mine[a.node] || {};
      var tr = document.createElement("tr");
      tr.dataset.node = a.node;
      cell(tr, a.node); cell(tr, a.pool);
      cell(tr, score(a.score)); cell(tr, pct(a.share), "share-active");
      cell(tr, score(c.score)); cell(tr, pct(c.share || 0), "share-candidate" + (c.share > a.share ? " up" : c.share < a.share ? " down" : ""));
      cell(tr, [a.reason && "active: " + a.reason, c.reason && "yours: " + c.reason].filter(Boolean).join("; "));
      table.appendChild(tr);
    });
    out.appendChild(table);
  }

  button.addEventListener("click", function () {
    var doc;
    try { doc = JSON.parse(area.value); } catch (err) { out.textContent = "Not valid JSON: " + err.message; return; }
    out.textContent = "asking the live fleet…";
    fetch(panel.dataset.url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": csrf ? csrf.value : ""},
      body: JSON.stringify({document: doc}),
    }).then(function (resp) {
      return resp.json().then(function (body) { return {ok: resp.ok, body: body}; });
    }).then(function (r) {
      if (r.ok) { render(r.body); return; }
      out.replaceChildren();
      var p = document.createElement("p"); p.className = "bad"; p.id = "whatif-error";
      p.textContent = r.body.error || "refused";
      out.appendChild(p);
      Object.keys(r.body.fields || {}).forEach(function (path) {
        var d = document.createElement("div"), code = document.createElement("code");
        code.textContent = path; d.appendChild(code);
        d.appendChild(document.createTextNode(": " + r.body.fields[path]));
        out.appendChild(d);
      });
    }).catch(function () { out.textContent = "could not reach the server"; });
  });
})();
