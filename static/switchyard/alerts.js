// The alerts page refreshes itself every 20 s (the evaluator runs every 10 s), unless the operator is typing in
// a silence form: a reload must never throw away a half-written reason.
(function () {
  "use strict";
  var PERIOD_MS = 20000;
  function busy() {
    var forms = document.querySelectorAll("form");
    for (var i = 0; i < forms.length; i++) {
      if (forms[i].contains(document.activeElement)) return true;
      var inputs = forms[i].querySelectorAll("input[name=reason], input[name^=value]");
      for (var j = 0; j < inputs.length; j++) if (inputs[j].value) return true;
    }
    return false;
  }
  setInterval(function () { if (!document.hidden && !busy()) window.location.reload(); }, PERIOD_MS);
})();
