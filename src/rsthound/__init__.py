"""rsthound: track down failed TCP connections and RST packets, and explain them."""

__version__ = "0.1.0"
