"""Stale jobs, in the database and in the API's JSON job cache.

One module per idea: ``staleness`` (what stale means; the exporter uses it too), ``cache``
(the JSON cache: lock, read, rewrite), ``connection`` (connecting with bounded waits,
scrubbed errors, the kept connection), ``database`` (what runs on it: counting, ending
jobs, the single-reaper lock, index advice), ``reaper`` (the daemon's cycle),
``force_clean`` (manual and automatic), ``status`` (what ``status`` shows).
"""
