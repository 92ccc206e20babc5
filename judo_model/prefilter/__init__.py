"""The anomaly prefilter model (PatchCore-style bank, calibration, references), one module per part; no Ray."""
