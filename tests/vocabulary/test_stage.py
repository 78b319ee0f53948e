"""The vocabulary stage: corrupt frames, determinism, manual mapping rows, CLI, Prefect."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cli.main import main
from flows.stage_tasks import vocabulary_task
from lam.errors import LamflowError
from lamflow.params import VocabularyParams
from tasks.vocabulary import artifact_markdown, vocabulary

from .conftest import ChatHandler

FAST = VocabularyParams(views="full", top_k=3, threshold="none")


@pytest.fixture(scope="module")
def drop(camvid, tmp_path_factory) -> Path:
    """3 CamVid val frames at 320x240 plus one corrupt file."""
    folder = tmp_path_factory.mktemp("drop")
    for path in sorted((camvid / "val" / "images").glob("*.jpg"))[:3]:
        Image.open(path).convert("RGB").resize((320, 240)).save(folder / path.name)
    (folder / "0016E5_99999.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


def test_stage_skips_and_counts_corrupt_frames(drop, camvid, tmp_path):
    out = tmp_path / "vocabulary.yaml"
    doc = vocabulary(str(drop), str(out), FAST, str(camvid / "classes.json"), progress=False)
    assert doc["frames"] == {"listed": 4, "tagged": 3, "skipped": 1}
    assert doc["skipped_frames"] == ["0016E5_99999"]
    written = yaml.safe_load(out.read_text())
    assert written["labels"] == doc["labels"] and written["schema"] == "lamflow.vocabulary/1"
    scores = [row["score"] for row in written["labels"]]
    assert scores == sorted(scores, reverse=True) and len(scores) >= 3
    assert len(written["mapping"]) == len(written["synsets"])
    assert written["target_classes"][0] == "sky"
    targets = {m["target"] for m in written["mapping"]}
    assert targets <= {*written["target_classes"], "unmapped"}
    members = [m for s in written["synsets"] for m in [s["name"], *s["synonyms"]]]
    assert sorted(members) == sorted(row["label"] for row in written["labels"])
    again = vocabulary(str(drop), str(out), FAST, str(camvid / "classes.json"), progress=False)
    assert again["labels"] == doc["labels"] and again["synsets"] == doc["synsets"]


def test_manual_mapping_rows_survive_a_rerun(drop, camvid, tmp_path):
    out = tmp_path / "vocabulary.yaml"
    vocabulary(str(drop), str(out), FAST, str(camvid / "classes.json"), progress=False)
    data = yaml.safe_load(out.read_text())
    data["mapping"][0].update(target="fence", source="manual")
    out.write_text(yaml.safe_dump(data))
    doc = vocabulary(str(drop), str(out), FAST, str(camvid / "classes.json"), progress=False)
    assert doc["mapping"][0]["target"] == "fence" and doc["mapping"][0]["source"] == "manual"


def test_stage_with_llm_endpoint_falls_back_on_unusable_answers(
    drop, camvid, tmp_path, chat_server, caplog
):
    ChatHandler.requests = []
    params = FAST.model_copy(update={"llm": "openai", "llm_url": chat_server})
    with caplog.at_level(logging.WARNING):
        doc = vocabulary(str(drop), str(tmp_path / "v.yaml"), params, str(camvid / "classes.json"))
    # The canned answer groups labels the tagger never proposed: grouping and mapping fall back.
    assert doc["provenance"]["grouping"] == "embedding"
    assert doc["provenance"]["llm"].startswith("openai:http://127.0.0.1")
    assert len(ChatHandler.requests) == 2 and caplog.text.count("malformed") == 2
    assert all(m["source"] == "embedding" for m in doc["mapping"])


def test_stage_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"")
    with pytest.raises(LamflowError, match="none of the 1 frame"):
        vocabulary(str(bad), str(tmp_path / "v.yaml"), FAST, progress=False)
    with pytest.raises(LamflowError, match="'yolo' is unknown; known: clip, imagenet-tagger"):
        vocabulary(str(bad), str(tmp_path / "v.yaml"), VocabularyParams(backend="yolo"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LamflowError, match="no frames"):
        vocabulary(str(tmp_path / "empty"), str(tmp_path / "v.yaml"), FAST, progress=False)


def test_cli_end_to_end(drop, camvid, tmp_path, capsys, caplog):
    out = tmp_path / "cli" / "vocabulary.yaml"
    argv = ["vocabulary", "--images", str(drop), "--out", str(out), "--no-progress"]
    argv += ["--target", str(camvid / "classes.json"), "--params", str(tmp_path / "none.yaml")]
    assert main([*argv[:-2], "--set", "vocabulary.views=full", "--set", "vocabulary.top_k=3"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["frames"]["skipped"] == 1 and summary["synsets"]
    assert "skipping frame 0016E5_99999" in caplog.text  # the undecodable frame is named
    assert yaml.safe_load(out.read_text())["provenance"]["params"]["top_k"] == 3
    assert main(["vocabulary", "--images", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "no such image folder" in capsys.readouterr().err
    assert main([*argv[:5], "--set", "vocabulary.combine=mean", "--no-progress"]) == 2
    assert "vocabulary.combine" in capsys.readouterr().err


def test_prefect_task_publishes_artifact(drop, tmp_path, prefect_harness):
    from prefect import flow
    from prefect.client.orchestration import get_client

    @flow
    def discover(images: str, out: str) -> dict:
        return vocabulary_task(images, out, FAST, None, progress=False)

    doc = discover(str(drop), str(tmp_path / "v.yaml"))
    assert "| synset |" in artifact_markdown(doc)

    import asyncio

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def _read():
        async with get_client() as client:
            flt = ArtifactFilter(key=ArtifactFilterKey(any_=["vocabulary"]))
            return await client.read_artifacts(artifact_filter=flt)

    artifacts = asyncio.run(_read())  # other flows of the session publish "vocabulary" too
    mine = [a for a in artifacts if str(drop) in (a.data or "")]
    assert mine and doc["synsets"][0]["name"] in mine[0].data
