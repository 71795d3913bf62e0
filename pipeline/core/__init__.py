"""The ground floor: settings, key names, errors, logging and stream ids; no Redis I/O."""
