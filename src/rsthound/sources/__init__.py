"""The only code that opens files, sockets, tracefs or /proc, or runs a program. Thin by
design: it reads, and hands the bytes or text to formats/.

What may live here: one kind of input each (capture files, live capture, counters,
listeners, processes, tracing, the network state, port names). Every reader of /proc takes
`proc_root`. May import `formats/`, `model` and `errors`; never analyze/, report/, sinks/.
"""
