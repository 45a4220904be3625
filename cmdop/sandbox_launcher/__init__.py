"""The sandbox fork server: a tiny stdlib-only program run in a fresh interpreter.

`forkserver.py` is never imported by the agent; `cmdop.adapters.launcher` reads its source and
runs it with `python -I -S -c`. See that module for the why.
"""
