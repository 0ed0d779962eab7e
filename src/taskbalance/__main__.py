"""``python -m taskbalance``: the command line (also what ``torchrun -m taskbalance`` runs)."""

from taskbalance.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
