"""Rendering only: text and JSON from the analyzers' records. Computes nothing."""
