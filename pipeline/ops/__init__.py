"""Operating a live pipeline: status, live view, blacklist, replay and re-processing, group positions."""
