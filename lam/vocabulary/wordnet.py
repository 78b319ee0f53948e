"""WordNet 3.0 noun hypernyms read straight from the database files (`data.noun`).

ImageNet ids ("n02958343") are WordNet 3.0 noun synset offsets, so the hypernym chain of an
ImageNet label is a byte-offset lookup in `data.noun`. The files come from the Debian/Ubuntu
package `wordnet-base` (/usr/share/wordnet) or any WordNet 3.0 `dict/` folder
($WNSEARCHDIR). Without them there is no offline hypernym source and the hierarchy falls
back to the LLM or the embedding grouping; nothing is hard-coded here.
"""

from __future__ import annotations

import os
from pathlib import Path

from lam.errors import LamflowError

SEARCH_DIRS = ("/usr/share/wordnet", "/usr/local/WordNet-3.0/dict", "/usr/share/wordnet/dict")


def find_wordnet_dir(explicit: str | None = None) -> Path | None:
    """Folder holding `data.noun`: `explicit`, else $WNSEARCHDIR, else SEARCH_DIRS; or None.

    An `explicit` folder without data.noun is an error (the user asked for it); a missing
    default is not.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if not (path / "data.noun").exists():
            raise LamflowError(f"no WordNet data.noun in {path} (vocabulary.wordnet_dir)")
        return path
    for candidate in (os.environ.get("WNSEARCHDIR"), *SEARCH_DIRS):
        if candidate and (Path(candidate) / "data.noun").exists():
            return Path(candidate)
    return None


class WordNetNouns:
    """Random access to WordNet noun synsets by offset.

    Args:
        dict_dir: folder with WordNet 3.0's `data.noun`.
    """

    def __init__(self, dict_dir: str | Path) -> None:
        self.path = Path(dict_dir) / "data.noun"
        if not self.path.exists():
            raise LamflowError(f"no WordNet data.noun at {self.path}")
        self.version = f"wordnet:{self.path}"
        self._cache: dict[str, tuple[list[str], list[str]]] = {}
        self._index: dict[str, list[str]] | None = None

    def synset(self, wnid: str) -> tuple[list[str], list[str]]:
        """'n02958343' -> (lemmas with spaces, hypernym wnids incl. instance hypernyms).

        Raises LamflowError for an id that is not a noun offset in the file.
        """
        if wnid in self._cache:
            return self._cache[wnid]
        if len(wnid) != 9 or wnid[0] != "n" or not wnid[1:].isdigit():
            raise LamflowError(f"not a WordNet noun id: {wnid!r} (expected 'n' + 8 digits)")
        offset = int(wnid[1:])
        with self.path.open("rb") as fh:
            fh.seek(offset)
            line = fh.readline().decode("utf-8", errors="replace")
        fields = line.split()
        if not fields or fields[0] != wnid[1:]:
            raise LamflowError(f"WordNet id {wnid} not found in {self.path}")
        n_words = int(fields[3], 16)
        lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(n_words)]
        pos = 4 + 2 * n_words
        n_ptrs = int(fields[pos])
        hypernyms = []
        for i in range(n_ptrs):
            symbol, target, pos_tag = fields[pos + 1 + 4 * i : pos + 4 + 4 * i]
            if symbol in ("@", "@i") and pos_tag == "n":
                hypernyms.append("n" + target)
        self._cache[wnid] = (lemmas, hypernyms)
        return lemmas, hypernyms

    def hypernym_chain(self, wnid: str, max_depth: int = 20) -> list[tuple[str, str]]:
        """Hypernyms of `wnid` from the nearest up to the root: [(wnid, first lemma), ...].

        Follows the first hypernym at each level (WordNet lists the main one first).
        """
        chain, current = [], wnid
        for _ in range(max_depth):
            _, parents = self.synset(current)
            if not parents:
                break
            current = parents[0]
            chain.append((current, self.synset(current)[0][0]))
        return chain

    def first_sense(self, lemma: str) -> str | None:
        """The most frequent noun sense of `lemma` ('traffic light' -> 'n06874185'), from
        `index.noun` beside `data.noun`; None when the lemma or the index is missing.

        Senses are listed most frequent first, which is usually, not always, the meaning a
        class name has (pin a sense where it matters: lam.source_taxonomies).
        """
        if self._index is None:
            self._index = {}
            index = self.path.with_name("index.noun")
            if index.exists():
                with index.open(encoding="utf-8", errors="replace") as fh:
                    for line in fh:
                        if line.startswith(" "):  # licence header
                            continue
                        fields = line.split()
                        n_senses = int(fields[2])
                        self._index[fields[0]] = ["n" + o for o in fields[-n_senses:]]
        senses = self._index.get(lemma.strip().lower().replace(" ", "_"))
        return senses[0] if senses else None
