"""Development and measurement: the embedded Redis Stack (and its libssl), bench, soak."""
