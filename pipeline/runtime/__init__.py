"""Running stages: the consumer-group agent loop, one agent per process, and the supervisor of them all."""
