"""Rebuild corpora/kjv_nt and corpora/web_nt from Debian's SWORD modules (run once, offline).

    apt-get install diatheke sword-text-kjv sword-text-web
    python3 corpora/extract_bibles.py corpora

One file per chapter of the 27 New Testament books (`40_Matthew_01.txt` ... `66_Revelation_22.txt`),
one verse per line, verse numbers and notes dropped, text otherwise as the module gives it.
"""

import re
import subprocess
import sys
from pathlib import Path

BOOKS = ["Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians", "2 Corinthians",
         "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians", "2 Thessalonians",
         "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James", "1 Peter", "2 Peter",
         "1 John", "2 John", "3 John", "Jude", "Revelation of John"]
MODULES = {"engKJV2006eb": "kjv_nt", "engWEB2015eb": "web_nt"}


def chapter(module: str, book: str, number: int) -> list[str]:
    """The verses of one chapter as plain text ([] past the book's last chapter)."""
    out = subprocess.run(["diatheke", "-b", module, "-f", "plain", "-k", f"{book} {number}"],
                         capture_output=True, text=True, check=True).stdout
    out = out.rsplit("\n(", 1)[0]  # the trailing "(module)" line
    parts = re.split(r"(?m)^[^\n]*? (\d+):(\d+): ", out)  # "<book> <chapter>:<verse>: " headers
    return [" ".join(parts[i + 2].split()) for i in range(1, len(parts) - 2, 3)
            if int(parts[i]) == number and parts[i + 2].strip()]


def main(root: Path) -> None:
    for module, folder in MODULES.items():
        target = root / folder
        target.mkdir(parents=True, exist_ok=True)
        for index, book in enumerate(BOOKS):
            number = 1
            while verses := chapter(module, book, number):
                name = book.replace(" of John", "").replace(" ", "_")
                (target / f"{40 + index:02d}_{name}_{number:02d}.txt").write_text("\n".join(verses) + "\n")
                number += 1


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "corpora"))
