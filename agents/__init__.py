"""Business logic of the pipeline's stages: generator, detector, aggregator."""
