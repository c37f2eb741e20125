"""Dataset sources (local, Hub download, synthetic demo), image probing, captions, aspect
bucketing and the metadata table. Plain Python + PIL + pyarrow; no Dagster here."""

# No re-exports on purpose: probe worker processes (spawned) import ``pixart_pipeline.data.probe``,
# and every import here would be paid again by each worker (pyarrow, pydantic: about 0.3 s each).
# Import from the submodules: ``from pixart_pipeline.data.manifest import scan_dataset``.
