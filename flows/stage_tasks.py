"""The Prefect task of each stage the flows run: the stage's plain function from `tasks/`,
wrapped once, named after the stage (its `dvc.yaml` key and `params.yaml` section).

Why here and not beside each function in `tasks/`: the stage layer does not import Prefect, so
`lamflow stage NAME` starts in well under a second and a stage runs where Prefect is absent;
and one table shows every task the flows use, once. Only storage-bound steps retry: a storage
fault is retried, a bad input is not. Tests call a task's function as `<task>.fn(...)`.
"""

from __future__ import annotations

from prefect import task

from tasks.adapt import adapt
from tasks.export import export
from tasks.ingest import ingest
from tasks.models import ensure_model
from tasks.qc import qc
from tasks.review_files import review_pull_files, review_push_files
from tasks.review_select import review_select
from tasks.review_sync import review_pull, review_push
from tasks.shards import annotate_shard, finish_annotate, warm_worker
from tasks.version import version
from tasks.vocabulary import vocabulary

ingest_task = task(name="ingest", retries=2, retry_delay_seconds=5)(ingest)
vocabulary_task = task(name="vocabulary", retries=2, retry_delay_seconds=5)(vocabulary)
# `train` as the flows run it: trains only when the seed set (or a train param) changed
train_task = task(name="train", retries=1)(ensure_model)
adapt_task = task(name="adapt")(adapt)
# `annotate`, cut into shards on the Dask cluster (tasks/shards.py): warm-up, shards, manifest
annotate_warm_up_task = task(name="annotate-warm-up", retries=1)(warm_worker)
annotate_shard_task = task(
    name="annotate-shard",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    task_run_name="annotate-shard-{stems[0]}",
)(annotate_shard)
annotate_manifest_task = task(name="annotate-manifest", retries=2)(finish_annotate)
qc_task = task(name="qc", retries=2, retry_delay_seconds=5)(qc)  # reads every output back
export_task = task(name="export", retries=2, retry_delay_seconds=5)(export)
version_task = task(name="version", retries=2, retry_delay_seconds=10)(version)
review_select_task = task(name="review_select")(review_select)
# review.backend labelstudio: the Label Studio API; files: task files under ROOT/review
review_push_task = task(name="review_push", retries=2, retry_delay_seconds=5)(review_push)
review_pull_task = task(name="review_pull", retries=2, retry_delay_seconds=5)(review_pull)
review_push_files_task = task(name="review_push_files", retries=2, retry_delay_seconds=5)(
    review_push_files
)
review_pull_files_task = task(name="review_pull_files", retries=2, retry_delay_seconds=5)(
    review_pull_files
)
