"""The app's experiments (never imported by the library): the demo, sweeps, the UTD-MHAD
benchmark, the paper's four-model comparison, two training lanes, seeds."""
