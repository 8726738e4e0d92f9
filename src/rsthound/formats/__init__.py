"""Pure parsers: bytes or text in, records out. No file, socket or /proc access here."""
