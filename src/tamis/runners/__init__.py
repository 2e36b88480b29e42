"""Beam PipelineOptions for each runner (local FnApiRunner, Dataflow, Flink, Spark)."""
