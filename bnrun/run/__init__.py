"""Running trials: one trial from plain values (claim, train, record), sweeps and their executors
(local, Ray), reproduction and re-evaluation of stored trials, provenance and progress."""
