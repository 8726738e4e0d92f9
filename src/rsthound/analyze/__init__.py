"""Pure logic with explicit state objects: flows, reset kinds, summaries. No I/O here."""
