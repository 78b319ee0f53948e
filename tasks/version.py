"""Stage `version`: put what a nightly run made under DVC, so a drop's labels can be traced to
the exact seed set, vocabulary and model that produced them, and all of them restored byte for
byte from the DVC remote.

The versions live in a *workspace*: a small git + DVC repository (`versioning.workspace`),
created on first use, holding only pointers:
    seeds.dvc                   the seed set the run's model was trained from
    models/MODEL_VERSION.dvc    each model directory a run labeled with
    vocabulary/DRIVE.dvc        a drop's vocabulary.yaml, when the run made one
    labels/DRIVE.dvc            a drop's labels (annotate output, QC report included)
    lineage/DRIVE.json          labels <- model version <- seed-set md5, vocabulary md5, run
One git commit per run, tagged `run-RUN_ID`. `restore` gets any of them back at any tag.

Why this design (and not a `foreach` stage per drop in dvc.yaml, or a commit in the project's
own repository): the fleet's data live in ROOT, usually on S3, and grow every night. `dvc add
--to-remote` streams each output from ROOT straight into the DVC remote (content-addressed, so
an unchanged seed, model file or label is stored once), nothing is downloaded into the
workspace, and the project's source repository never sees a nightly commit. The workspace's git
history is the lineage; push it to a git remote (`versioning.git_remote`) to keep it off the
machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from lam.errors import LamflowError
from lamflow.params import VersioningParams
from lamflow.storage import get_fs, join, safe_name

log = logging.getLogger(__name__)
REMOTE_NAME = "lamflow"
LINEAGE = "lineage"


def workspace_path(params: VersioningParams, root: str) -> Path:
    """The local workspace directory: `versioning.workspace`, or ROOT/versions when ROOT is a
    local folder, or $LAMFLOW_HOME (~/.lamflow)/versions/<hash of ROOT> for a remote ROOT (git
    needs a local disk; set `git_remote` so its history outlives the machine)."""
    if params.workspace:
        return Path(params.workspace)
    if "://" not in root or root.startswith("file://"):
        return Path(root.removeprefix("file://")) / "versions"
    # one workspace per ROOT, wherever the command runs from (not relative to the current
    # directory), keyed by a hash: distinct ROOTs never share a repository
    home = Path(os.environ.get("LAMFLOW_HOME") or Path.home() / ".lamflow")
    return home / "versions" / hashlib.sha256(root.rstrip("/").encode()).hexdigest()[:16]


def remote_url(params: VersioningParams, root: str) -> str:
    """`versioning.remote`, or ROOT/dvc-store (the DVC remote beside the data)."""
    return params.remote or join(root, "dvc-store")


def _git(workspace: Path, *args: str) -> str:
    """Run git in the workspace; LamflowError with its message on failure."""
    cmd = ["git", "-c", "user.name=lamflow", "-c", "user.email=lamflow@localhost"]
    cmd += ["-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", *args]
    done = subprocess.run(cmd, cwd=workspace, capture_output=True, text=True)
    if done.returncode != 0:
        raise LamflowError(f"git {' '.join(args)} failed in {workspace}: {done.stderr.strip()}")
    return done.stdout


def _dvc_environment() -> None:
    """DVC reads the S3 endpoint from AWS_ENDPOINT_URL; lamflow's own variable names it too."""
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    endpoint = os.environ.get("LAMFLOW_S3_ENDPOINT")
    if endpoint:
        os.environ.setdefault("AWS_ENDPOINT_URL", endpoint)


def open_workspace(workspace: Path, remote: str) -> Any:
    """The workspace's dvc Repo, created (git init + dvc init + default remote) on first use.

    The remote URL is rewritten when it changed; credentials are never stored (DVC reads them
    from the environment, as lamflow does)."""
    _dvc_environment()
    from dvc.repo import Repo

    workspace.mkdir(parents=True, exist_ok=True)
    if not (workspace / ".git").exists():
        _git(workspace, "init", "-q")
    if not (workspace / ".dvc").exists():
        with contextlib.redirect_stdout(io.StringIO()):  # DVC's "you can now commit" hint
            Repo.init(str(workspace))
    with Repo(str(workspace)) as repo:  # closed: its state database is checkpointed
        with repo.config.edit() as conf:
            conf["remote"][REMOTE_NAME] = {"url": _dvc_url(remote)}
            conf["core"]["remote"] = REMOTE_NAME
            conf["core"]["autostage"] = True
    return Repo(str(workspace))  # reopened, so it reads the config just written


def _dvc_url(url: str) -> str:
    """DVC wants a plain path for a local folder (fsspec URLs may say file://)."""
    return (
        str(Path(url.removeprefix("file://")).resolve())
        if "://" not in url or url.startswith("file://")
        else url
    )


def _add(repo: Any, workspace: Path, source: str, target: str) -> str:
    """`dvc add --to-remote SOURCE -o TARGET`: hash `source` (a file or folder URL), upload it
    to the remote, write TARGET.dvc; returns the md5 DVC recorded."""
    out = workspace / target
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):  # DVC prints git hints on stdout
        repo.add(_dvc_url(source), out=str(out), to_remote=True)
    return _recorded_md5(workspace / f"{target}.dvc")


def _recorded_md5(dvc_file: Path) -> str:
    """The md5 a .dvc file records for its output."""
    return str(yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"])


def version(
    root: str,
    run: str,
    model: str,
    model_version: str,
    seeds: str,
    drops: dict[str, dict[str, str]],
    params: VersioningParams | None = None,
) -> dict[str, Any]:
    """Version one nightly run's outputs under DVC and commit them as tag `run-RUN`.

    Args:
        root: ROOT of the fleet (for the default workspace and remote).
        run: the run's id (a flow run id): the git tag is `run-<run>`.
        model: URL of the model directory the run labeled with; `model_version` its version.
        seeds: URL of the seed set the model was trained from.
        drops: drive -> {"labels": URL of its annotate output, "vocabulary": URL of its
            vocabulary.yaml or ""} for every drop the run labeled or relabeled.
    Returns:
        {"workspace", "remote", "tag", "commit", "seeds_md5", "model_md5",
         "drops": {drive: lineage}}; the lineage is also written to lineage/DRIVE.json.
    """
    params = params or VersioningParams()
    workspace = workspace_path(params, root)
    remote = remote_url(params, root)
    tag = f"run-{safe_name(run, 'run id')}"
    if params.git_remote:
        _catch_up(workspace, params.git_remote)
    with open_workspace(workspace, remote) as repo:  # closed even when an add fails
        seeds_md5 = _add(repo, workspace, seeds, "seeds")
        model_target = f"models/{safe_name(model_version, 'model version')}"
        # a model version names its bytes (config + weights): versioned once, not streamed again
        known = workspace / f"{model_target}.dvc"
        if known.exists():
            model_md5 = _recorded_md5(known)
        else:
            model_md5 = _add(repo, workspace, model, model_target)
        lineage: dict[str, Any] = {}
        for drive, urls in sorted(drops.items()):
            name = safe_name(drive, "drive id")
            entry: dict[str, Any] = {
                "drive": drive,
                "run": run,
                "labels": f"labels/{name}",
                "labels_md5": _add(repo, workspace, urls["labels"], f"labels/{name}"),
                "model_version": model_version,
                "model": model_target,
                "model_md5": model_md5,
                "seeds": "seeds",
                "seeds_md5": seeds_md5,
                "vocabulary": None,
                "vocabulary_md5": None,
            }
            vocabulary = urls.get("vocabulary") or ""
            if vocabulary:
                fs, path = get_fs(vocabulary)
                if fs.exists(path):
                    entry["vocabulary"] = f"vocabulary/{name}.yaml"
                    entry["vocabulary_md5"] = _add(repo, workspace, vocabulary, entry["vocabulary"])
            (workspace / LINEAGE).mkdir(exist_ok=True)
            (workspace / LINEAGE / f"{name}.json").write_text(json.dumps(entry, indent=1) + "\n")
            lineage[drive] = entry
    _git(workspace, "add", "-A")
    message = f"nightly run {run}: model {model_version}, drops {', '.join(sorted(drops)) or '-'}"
    if _git(workspace, "status", "--porcelain").strip():
        _git(workspace, "commit", "-q", "-m", message)
    commit = _git(workspace, "rev-parse", "HEAD").strip()
    tag = _free_tag(workspace, tag, commit)
    _git(workspace, "tag", tag, commit)
    if params.git_remote:
        _git(workspace, "push", "-q", params.git_remote, "HEAD", f"refs/tags/{tag}")
    log.info("versioned run %s as %s (%s) in %s", run, tag, commit[:8], workspace)
    return {
        "workspace": str(workspace),
        "remote": remote,
        "tag": tag,
        "commit": commit,
        "seeds_md5": seeds_md5,
        "model_md5": model_md5,
        "drops": lineage,
    }


def _free_tag(workspace: Path, tag: str, commit: str) -> str:
    """`tag`, or `tag.2`, `tag.3`, ... when it already names another commit: a run retried
    under the same id (Prefect reuses a flow run's id) never moves the tag of its first try,
    whose lineage stays readable. The same commit tagged again keeps its tag."""
    name, attempt = tag, 1
    while True:
        try:
            at = _git(workspace, "rev-parse", "--verify", "-q", f"refs/tags/{name}^{{commit}}")
        except LamflowError:
            return name  # free
        if at.strip() == commit:
            _git(workspace, "tag", "-d", name)  # re-created on the same commit by the caller
            return name
        attempt += 1
        name = f"{tag}.{attempt}"


def _catch_up(workspace: Path, git_remote: str) -> None:
    """Fast-forward the workspace to `git_remote` before a run commits, so workspaces on
    several machines keep one history; a diverged history fails loudly (LamflowError)."""
    if not (workspace / ".git").exists():
        workspace.parent.mkdir(parents=True, exist_ok=True)
        try:
            _git(workspace.parent, "clone", "-q", git_remote, str(workspace))
            return
        except LamflowError:
            log.info("git remote %s has no history yet: a new workspace starts it", git_remote)
            return
    branch = _git(workspace, "rev-parse", "--abbrev-ref", "HEAD").strip()
    try:
        _git(workspace, "fetch", "-q", git_remote, branch)
    except LamflowError:
        return  # the remote has no such branch yet: this run's push creates it
    _git(workspace, "merge", "-q", "--ff-only", "FETCH_HEAD")


def lineage(workspace: str, rev: str, drive: str) -> dict[str, Any]:
    """lineage/DRIVE.json as of `rev` (a tag such as run-RUN, or a commit)."""
    try:
        text = _git(Path(workspace), "show", f"{rev}:{LINEAGE}/{safe_name(drive)}.json")
    except LamflowError as exc:
        raise LamflowError(f"no lineage of drop {drive!r} at {rev!r} in {workspace}") from exc
    return dict(json.loads(text))


def restore(workspace: str, rev: str, path: str, out: str) -> list[str]:
    """Get `path` (e.g. labels/DRIVE, models/VERSION, seeds) as of `rev` into local folder
    `out`, from the DVC remote (what `git checkout REV && dvc pull PATH` does, without touching
    the workspace). Returns the files written, relative to `out`."""
    _dvc_environment()
    from dvc.api import DVCFileSystem

    try:
        fs = DVCFileSystem(workspace, rev=rev)
        fs.get(path, out, recursive=True)
    except FileNotFoundError as exc:
        raise LamflowError(f"{path!r} is not versioned at {rev!r} in {workspace}") from exc
    base = Path(out)
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


def list_versions(workspace: str) -> list[dict[str, str]]:
    """Every run tag of the workspace, newest first: {"tag", "commit", "date", "message"}.

    In history order (runs can share a second, so dates cannot order them); a run that changed
    nothing is tagged on the commit before it and listed with it."""
    text = _git(Path(workspace), "log", "--format=%H%x09%cI%x09%s%x09%D")
    rows = []
    for line in text.splitlines():
        commit, date, message, refs = line.split("\t", 3)
        tags = [r.strip()[len("tag: ") :] for r in refs.split(",") if r.strip().startswith("tag: ")]
        for tag in sorted((t for t in tags if t.startswith("run-")), reverse=True):
            rows.append({"tag": tag, "commit": commit, "date": date, "message": message})
    return rows
