// The policy editor's form view: every number, switch and choice of the document as a labelled input with its
// unit, range and meaning (read from the kind's JSON Schema), editing the same JSON document as the text view.
// Both validate as the operator types: the form checks each input against its range at once, and the server's
// schema check (control.js, the preview endpoint) marks the inputs whose paths it names.
(function () {
  "use strict";
  var host = document.getElementById("policy-form-view");
  var area = document.getElementById("document");
  if (!host || !area) return;
  var schema = null, doc = null, writing = false;
  var UNITS = [["_pct", "%"], ["_ms", "ms"], ["_s", "s"], ["_bytes", "bytes"], ["_w", "W"], ["_min", "min"]];

  function resolve(s) {
    var guard = 0;
    while (s && guard++ < 10) {
      if (s.$ref) { s = schema.$defs[s.$ref.split("/").pop()]; continue; }
      if (s.anyOf) { s = s.anyOf.filter(function (x) { return x.type !== "null"; })[0]; continue; }
      if (s.allOf && s.allOf.length === 1) { s = s.allOf[0]; continue; }
      break;
    }
    return s || {};
  }
  function unitOf(key) {
    for (var i = 0; i < UNITS.length; i++) if (key.endsWith(UNITS[i][0])) return UNITS[i][1];
    return "";
  }
  function range(s) {
    var lo = s.minimum !== undefined ? s.minimum : s.exclusiveMinimum;
    var hi = s.maximum !== undefined ? s.maximum : s.exclusiveMaximum;
    if (lo === undefined && hi === undefined) return "";
    return (lo === undefined ? "…" : (s.exclusiveMinimum !== undefined ? ">" : "") + lo) + " – " +
           (hi === undefined ? "…" : hi);
  }
  function check(s, raw) {
    if (raw === "" || raw === null) return {error: "a number is required"};
    var v = Number(raw);
    if (!isFinite(v)) return {error: raw + " is not a number"};
    if (s.type === "integer" && Math.floor(v) !== v) return {error: v + " is not a whole number"};
    if (s.minimum !== undefined && v < s.minimum) return {error: v + " is below " + s.minimum, value: v};
    if (s.exclusiveMinimum !== undefined && v <= s.exclusiveMinimum) return {error: v + " must be above " + s.exclusiveMinimum, value: v};
    if (s.maximum !== undefined && v > s.maximum) return {error: v + " is above " + s.maximum, value: v};
    if (s.exclusiveMaximum !== undefined && v >= s.exclusiveMaximum) return {error: v + " must be below " + s.exclusiveMaximum, value: v};
    return {value: v};
  }
  function setAt(path, value) {
    var node = doc;
    for (var i = 0; i < path.length - 1; i++) node = node[path[i]];
    node[path[path.length - 1]] = value;
  }
  function pathText(path) {
    return path.map(function (p, i) { return typeof p === "number" ? "[" + p + "]" : (i ? "." : "") + p; }).join("");
  }
  function push() {
    writing = true;
    area.value = JSON.stringify(doc, null, 2);
    area.dispatchEvent(new Event("input", {bubbles: true}));  // the JSON and schema checks run as for typing
    writing = false;
  }

  function field(container, path, key, s, value, label) {
    var id = "pf-" + pathText(path).replace(/[^a-zA-Z0-9_-]/g, "-");
    var row = document.createElement("div");
    row.className = "pf-row";
    row.dataset.path = pathText(path);
    var lab = document.createElement("label");
    lab.htmlFor = id;
    var unit = unitOf(key);
    lab.textContent = label + (unit ? " (" + unit + ")" : "");
    var input;
    if (s.enum) {
      input = document.createElement("select");
      s.enum.forEach(function (opt) {
        var o = document.createElement("option"); o.value = opt; o.textContent = opt;
        if (opt === value) o.selected = true;
        input.appendChild(o);
      });
      input.addEventListener("change", function () { setAt(path, input.value); push(); });
    } else if (s.type === "boolean") {
      input = document.createElement("input");
      input.type = "checkbox";
      input.checked = !!value;
      input.addEventListener("change", function () { setAt(path, input.checked); push(); });
    } else {
      input = document.createElement("input");
      input.type = "number";
      input.step = s.type === "integer" ? "1" : "any";
      input.value = value;
      var err = document.createElement("span");
      err.className = "pf-error bad";
      err.setAttribute("aria-live", "polite");
      input.addEventListener("input", function () {
        var r = check(s, input.value);
        err.textContent = r.error ? pathText(path) + ": " + r.error : "";
        row.classList.toggle("pf-bad", !!r.error);
        // An out-of-range number still goes into the document, so both views always show the same document;
        // the server's check (and the save) refuse it there too.
        if (r.value !== undefined) { setAt(path, r.value); push(); }
      });
      row.appendChild(lab); row.appendChild(input); row.appendChild(err);
    }
    input.id = id;
    input.dataset.path = pathText(path);
    if (!row.contains(lab)) { row.appendChild(lab); row.appendChild(input); }
    var hint = document.createElement("div");
    hint.className = "pf-hint muted small";
    hint.textContent = [range(s), s.description || ""].filter(Boolean).join(" · ");
    if (hint.textContent) row.appendChild(hint);
    container.appendChild(row);
  }

  function walk(container, value, s, path, label) {
    s = resolve(s);
    if (Array.isArray(value)) {
      value.forEach(function (item, i) {
        var name = item && typeof item === "object" ? (item.metric || item.name || "") : "";
        walk(container, item, s.items || {}, path.concat([i]), label + (name ? " · " + name : " [" + i + "]"));
      });
    } else if (value !== null && typeof value === "object") {
      Object.keys(value).forEach(function (key) {
        var child = (s.properties && s.properties[key]) ||
                    (typeof s.additionalProperties === "object" ? s.additionalProperties : null);
        if (!child) return;
        walk(container, value[key], child, path.concat([key]), label ? label + " · " + key : key);
      });
    } else if (typeof value === "number" || typeof value === "boolean" || (s.enum && typeof value === "string")) {
      field(container, path, String(path[path.length - 1]), s, value, label);
    }
  }

  function render() {
    try { doc = JSON.parse(area.value); } catch (e) { return; }
    if (!doc || typeof doc !== "object" || !schema) return;
    host.replaceChildren();
    Object.keys(doc).forEach(function (key) {
      var set = document.createElement("fieldset");
      var legend = document.createElement("legend");
      legend.textContent = key;
      set.appendChild(legend);
      walk(set, doc[key], (schema.properties && schema.properties[key]) ||
           (typeof schema.additionalProperties === "object" ? schema.additionalProperties : {}), [key], "");
      if (set.querySelector(".pf-row")) host.appendChild(set);
    });
  }

  // The server's schema check names bad paths: mark those inputs too (errors by field in both views).
  area.addEventListener("schema-checked", function (event) {
    var fields = (event.detail && event.detail.fields) || {};
    host.querySelectorAll(".pf-row").forEach(function (row) {
      var msg = fields[row.dataset.path];
      row.classList.toggle("pf-server-bad", !!msg);
      var err = row.querySelector(".pf-error");
      if (err && msg && !err.textContent) err.textContent = row.dataset.path + ": " + msg;
    });
  });
  var timer = null;
  area.addEventListener("input", function () {
    if (writing) return;
    clearTimeout(timer);
    timer = setTimeout(render, 300);  // typing in the JSON view: the form follows once it parses
  });
  fetch(host.dataset.schemaUrl, {credentials: "same-origin"}).then(function (r) { return r.json(); })
    .then(function (s) { schema = s; render(); });
})();
