// Draws every figure of the page: each JSON script element of class figure-data holds a plotly.js
// specification for the element named by its data-target.
"use strict";
document.querySelectorAll("script.figure-data").forEach(function (node) {
  var spec = JSON.parse(node.textContent);
  Plotly.newPlot(node.dataset.target, spec.data, spec.layout, {responsive: true, displaylogo: false});
});
