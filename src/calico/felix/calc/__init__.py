"""The calculation graph: datastore updates in, ordered dataplane messages out. Pure; no I/O."""
