// Control-plane pages: live JSON check in the policy editor, confirmation before rollbacks and node actions.
(function () {
  "use strict";
  document.querySelectorAll("textarea[data-json-check]").forEach(function (area) {
    var status = document.getElementById(area.dataset.jsonCheck);
    function check() {
      try {
        var value = JSON.parse(area.value);
        if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error("the document must be a JSON object");
        status.textContent = "valid JSON"; status.className = "ok"; area.classList.remove("json-bad");
      } catch (err) {
        status.textContent = err.message; status.className = "bad"; area.classList.add("json-bad");
      }
    }
    area.addEventListener("input", check);
    check();
  });

  // Schema check as you type: the server's preview endpoint validates (nothing is stored), debounced.
  document.querySelectorAll("textarea[data-preview-url]").forEach(function (area) {
    var out = document.getElementById(area.dataset.schemaStatus);
    var csrf = area.form && area.form.querySelector("input[name=csrfmiddlewaretoken]");
    var timer = null, asked = 0;
    function show(text, cls, fields) {
      out.replaceChildren();
      out.className = "schema-status " + cls;
      var p = document.createElement("div");
      p.textContent = text;
      out.appendChild(p);
      if (fields) {
        var ul = document.createElement("ul");
        Object.keys(fields).forEach(function (path) {
          var li = document.createElement("li"), code = document.createElement("code");
          code.textContent = path;
          li.appendChild(code);
          li.appendChild(document.createTextNode(": " + fields[path]));
          ul.appendChild(li);
        });
        out.appendChild(ul);
      }
    }
    function validate() {
      var doc;
      try { doc = JSON.parse(area.value); } catch (err) { out.replaceChildren(); return; }
      var mine = ++asked;
      fetch(area.dataset.previewUrl, {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRFToken": csrf ? csrf.value : ""},
        body: JSON.stringify({document: doc}),
      }).then(function (resp) {
        return resp.json().then(function (body) { return {ok: resp.ok, body: body}; });
      }).then(function (r) {
        if (mine !== asked) return;  // an older answer arriving late
        area.dispatchEvent(new CustomEvent("schema-checked", {detail: {ok: r.ok, fields: r.ok ? {} : (r.body.fields || {})}}));
        if (r.ok) {
          var n = (r.body.changes || []).length;
          show("schema: valid · " + n + " change" + (n === 1 ? "" : "s") + " against the active revision", "ok");
        } else {
          show("schema: " + (r.body.error || "invalid"), "bad", r.body.fields);
        }
      }).catch(function () { if (mine === asked) show("schema: could not check (offline?)", "muted"); });
    }
    area.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(validate, 400); });
    validate();
  });
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
})();
