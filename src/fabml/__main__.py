"""``python -m fabml`` (also what ``torchrun -m fabml ...`` runs)."""

from fabml.cli import main

if __name__ == "__main__":
    main()
