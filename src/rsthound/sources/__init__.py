"""The only code that opens files, sockets, tracefs or /proc. Thin by design."""
