"""``python -m sldistill`` runs the command-line interface."""
from sldistill.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
