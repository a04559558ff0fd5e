"""The shared server runtime: settings, auth, errors, logs, metrics, server bootstrap."""
