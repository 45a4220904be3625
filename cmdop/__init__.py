"""cmdop: run tools on a Linux server for remote callers, through a permission gate, audited.

Importing this package must stay cheap: `cmdop --version` is timed (bench/startup.py).
Heavy dependencies (trio, grpc, yaml, cryptography, tree-sitter) are imported where used.
"""

__version__ = "0.1.0"
