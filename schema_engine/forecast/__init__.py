"""The forecast's parts: a copy of the primary with its data, its traffic captured, and that traffic replayed.

- ``programs``: PostgreSQL's own programs, found for the server's version and run as an OS user
  that may run a server, with the connection in their environment (never on a command line);
- ``leftovers``: the scratch folders a run makes, each naming its run, and what a killed run left;
- ``server``: a server of the forecast's own in a scratch folder (kept apart from its source,
  started on a free port, stopped), and ``Clone``, the running copy both kinds of copy yield;
- ``clone``: a physical copy of a running primary (``pg_basebackup``), started on a free port and
  removed afterwards;
- ``logical``: a logical copy of chosen tables instead (their newest rows and what those
  reference, the whole schema, the roles), in a scratch cluster of its own, removed afterwards;
- ``capture``: the primary's statements for a window, through its own logging switched on and
  back, or from a log the operator has;
- ``replay``: a capture replayed against the copy at its recorded pace (``pgreplay``), or the
  default workload an app registers when there is no capture;
- ``run``: ``forecast()``, the pending revisions applied to the copy under that traffic, one by one;
- ``measure``: one revision measured (its duration, WAL, tables rewritten, size change), with
  ``sampler`` (the locks it holds, the statements waiting on them) and ``latency`` (the replayed
  statements' latencies); ``backfills``: the declared backfills' samples, through a sampler an app
  registers; ``result``: what a forecast found, the types its readers share.
- ``verdict``: the limits a forecast is judged by and the problems found; ``chart``: its SVG
  picture; ``stored``: the last forecast, kept for the admin's schema page.
"""
from schema_engine.forecast.run import forecast

__all__ = ["forecast"]
