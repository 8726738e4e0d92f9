"""The one way to watch a host live: an Observation opens the capture, the tracer, the
counters and the listeners together; Sightings classify what the capture shows and name
the process of each connection; Context reads what explains it (addresses, rules, routes,
neighbours, sysctls, history); `collect` is diagnose's window, Monitor watch's always-on one.

What may live here: code that opens sources and puts them together for a live command.
Decisions belong in analyze/, rendering in report/. Everything is imported here, at once,
so that `watch --user` has it all loaded before it gives up root.
"""

from rsthound.observe import context, investigate, monitor, observation, sightings, tallies

__all__ = ["context", "investigate", "monitor", "observation", "sightings", "tallies"]
