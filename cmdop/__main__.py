"""`python -m cmdop` behaves exactly like the `cmdop` console script."""

from cmdop.cli.main import entry

if __name__ == "__main__":
    entry()
