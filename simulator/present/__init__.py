"""Presentation: plotly figures, the HTML report, terminal tables and the per-operator explanation of a step."""
