"""Pipeline stages: one plain function per stage (fsspec I/O) plus its Prefect task.

The CLI (`lamflow stage NAME`, `lamflow train`, ...), `dvc.yaml` and the flows in `flows/` all
call these same functions; nothing about a stage is written twice.
"""
