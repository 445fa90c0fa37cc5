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
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
})();
