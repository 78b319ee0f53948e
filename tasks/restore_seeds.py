"""Stage `restore_seeds`: `data/seeds` as `data/seeds.dvc` records it, on any checkout.

What `make data` runs, and the first stage of dvc.yaml, so a plain `dvc repro` on a fresh clone
works too. Such a clone has `data/seeds.dvc` but neither the folder (git-ignored: the CamVid
frames may not be redistributed) nor DVC's cache, and usually no remote. DVC alone cannot check
the folder there: `dvc status` reports "not in cache" before it compares the folder's hash with
the recorded one (so `make data` failed on every fresh clone), and `dvc commit` or `dvc repro`
would record whatever bytes are there as the new seeds.

So the folder comes from DVC's cache, else its remote, else the archive (`import_seeds`: frames
and labels copied byte for byte, provenance without time or path); then DVC's own md5 of the
folder must equal the md5 `data/seeds.dvc` records, and only then is the folder committed into
the cache, leaving `data/seeds.dvc` as it is. An import that gives other bytes is removed again
and fails naming both hashes. A folder that is already there is verified the same way; one that
differs (seeds edited by hand, not yet recorded) is left alone for `dvc repro` to record.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from lam.errors import LamflowError
from lamflow.storage import write_text_atomic
from tasks.seed_bootstrap import import_seeds

log = logging.getLogger(__name__)


def _dvc_output(repo: Any, dvc_file: Path) -> Any:
    """The single output of the `.dvc` file (a DVC Output: path, recorded hash, cache)."""
    try:
        (stage,) = repo.stage.collect(str(dvc_file))
        (out,) = stage.outs
    except ValueError as exc:
        raise LamflowError(f"{dvc_file} must record exactly one output") from exc
    if not out.hash_info or not out.use_cache:
        raise LamflowError(f"{dvc_file} records no cached md5 for {out}")
    return out


def _fetch(repo: Any, dvc_file: Path) -> str:
    """Check the folder out of DVC's cache, else pull it from the remote: "cache", "remote",
    or "" when neither holds it (a fresh clone)."""
    from dvc.exceptions import DvcException

    quiet = contextlib.redirect_stdout(io.StringIO())  # DVC's progress and hints
    for source, action in (("cache", repo.checkout), ("remote", repo.pull)):
        try:
            with quiet:
                action(targets=[str(dvc_file)])
        except DvcException as exc:
            log.info("%s: not in the DVC %s (%s)", dvc_file, source, type(exc).__name__)
            continue
        return source
    return ""


def restore_seeds(
    dvc_file: str,
    images: str,
    labels: str,
    stems: list[str],
    classes: str,
    source: str = "camvid",
    report: str = "",
) -> dict[str, Any]:
    """Make the folder `dvc_file` records (data/seeds) exist, verified, and in DVC's cache.

    Args:
        dvc_file: the `.dvc` file (data/seeds.dvc), inside a DVC repository.
        images, labels, stems, classes, source: what `import_seeds` reads when neither DVC's
            cache nor its remote holds the folder (params: train.seeds, the CamVid train split).
        report: a JSON file to write {"dvc_file", "path", "md5", "nfiles"} to (the dvc.yaml
            stage's output; nothing about the machine or the time, so re-runs write the same).
    Returns {"path", "md5", "restored_from": "workspace" | "cache" | "remote" | "import",
    "verified": whether the folder has the recorded md5, "committed": whether it was added to
    the cache now}. LamflowError when an import does not give the recorded bytes.
    """
    from dvc.repo import Repo

    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    record = Path(dvc_file).resolve()
    if not record.is_file():
        raise FileNotFoundError(f"no such .dvc file: {dvc_file}")
    with Repo(Repo.find_root(str(record.parent))) as repo:
        out = _dvc_output(repo, record)
        folder = Path(out.fs_path)
        restored = "workspace" if folder.exists() else _fetch(repo, record)
        if not restored:
            import_seeds(images, labels, list(stems), str(folder), classes, source)
            restored = "import"
        expected = out.hash_info.value
        actual = out.get_hash().value
        if actual != expected and restored == "import":
            shutil.rmtree(folder)  # never left for `dvc repro` to record as the seeds
            raise LamflowError(
                f"imported seeds {stems} from {images} have md5 {actual}, but {dvc_file} "
                f"records {expected}: the archive's frames or labels differ from the ones the "
                "seed set was made from (removed again)"
            )
        if actual != expected:
            log.warning(
                "%s differs from %s (md5 %s, recorded %s): left as it is; `dvc repro` records "
                "the edit, `dvc checkout %s` undoes it",
                folder,
                dvc_file,
                actual,
                expected,
                dvc_file,
            )
        committed = False
        if actual == expected and out.changed_cache():
            with repo.lock, contextlib.redirect_stdout(io.StringIO()):
                out.commit()
            committed = True
    result = {
        "path": str(folder),
        "md5": actual,
        "restored_from": restored,
        "verified": actual == expected,
        "committed": committed,
    }
    log.info("%s: %s", dvc_file, result)
    if report:
        path = os.path.relpath(folder, repo.root_dir)
        doc = {"dvc_file": dvc_file, "path": path, "md5": expected, "nfiles": out.meta.nfiles}
        write_text_atomic(report, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return result
