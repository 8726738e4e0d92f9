"""Pure parsers: bytes or text in, records out (pcap, pcapng, link layers, IPv4/IPv6/TCP,
/proc files, trace records, sock_diag replies, nft output).

What may live here: a function of its input alone. No file, socket or /proc access; may
import `model`, `errors` and other parsers only.
"""
