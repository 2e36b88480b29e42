"""Beam PipelineOptions for each runner (local FnApiRunner, Dask, Dataflow, Flink, Spark)."""
