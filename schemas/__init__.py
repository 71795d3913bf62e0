"""The click and verdict models and their wire format on Redis Streams."""
