"""The paper reproductions: settings and presets, the runner and the reports
(``python experiments/run.py NAME``)."""
