"""Rendering only: text, JSON, charts and the Prometheus exposition from the records.

What may live here: functions from records to text or JSON objects; they decide nothing.
May import `analyze/` (for its records), `model`, `textforms`; never sources/, sinks/ or
observe/.
"""
