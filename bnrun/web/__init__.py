"""The read-only web view of a store (`bnrun ui`) and the self-contained HTML report
(`bnrun report --format html`): server-rendered pages over the analysis layer's results, their figures
drawn on the server as inline SVG (`svg.py`, no charting library), nothing from the network."""
