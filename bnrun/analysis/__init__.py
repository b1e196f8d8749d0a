"""Analysis of stored trials, without torch: statistics, groups and comparisons, pivots,
diagnostic summaries, rendering (one module per format family) and figures."""
