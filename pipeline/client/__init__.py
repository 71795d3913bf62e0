"""Reaching Redis: the hot-path client, the tools' opener, the Function library, and outage classification."""
