// The runs page's selection: the compare button opens /compare?ids=11,12 with the ticked runs (without this
// script the form still sends ids=11&ids=12, which /compare reads too), and says how many are ticked.
"use strict";
(function () {
  var form = document.getElementById("pick");
  if (!form) return;
  var boxes = function () { return document.querySelectorAll('input[name="ids"][form="pick"]'); };
  var ticked = function () {
    return Array.prototype.filter.call(boxes(), function (box) { return box.checked; })
      .map(function (box) { return box.value; });
  };
  var button = document.getElementById("compare-button");
  var said = document.getElementById("picked");
  var update = function () {
    var ids = ticked();
    button.disabled = ids.length < 2 || ids.length > 12;
    said.textContent = ids.length ? ids.length + " ticked: " + ids.join(", ") : "tick 2 to 12 runs";
  };
  Array.prototype.forEach.call(boxes(), function (box) { box.addEventListener("change", update); });
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    window.location.href = "/compare?ids=" + ticked().join(",");
  });
  update();
})();
