"""Pure logic with explicit state objects: flows, reset kinds, summaries, rates, alert
rules, the diagnosis.

What may live here: decisions over records. No I/O, no printing, no module-level state;
memory bounded by construction. May import `formats/`, `model`, `textforms`, `metrics`;
never sources/, observe/, report/, sinks/ or commands/.
"""
