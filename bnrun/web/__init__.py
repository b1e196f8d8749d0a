"""The read-only web view of a store (`bnrun ui`) and the self-contained HTML report
(`bnrun report --format html`): server-rendered pages over the analysis layer's results, one
charting library (plotly.js, served from the installed `plotly` package), nothing from the network."""
