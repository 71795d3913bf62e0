"""Runtime of the click-fraud pipeline: settings, keys, Redis access, agent runtime, CLI."""
