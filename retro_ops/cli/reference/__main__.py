"""`python -m retro_ops.cli.reference [FOLDER]`: write the generated reference pages."""

import sys
from pathlib import Path

from retro_ops.cli.reference import write

REPO = Path(__file__).resolve().parents[3]

if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "reference"
    for path in write(folder):
        print(path)
