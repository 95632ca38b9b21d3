"""The config schema, building a run's parts, the LightningModule, the parallel strategies and
checkpoints."""
