"""The forecast's parts: a copy of the primary with its data, its traffic captured, and that traffic replayed.

- ``programs``: PostgreSQL's own programs, found for the server's version and run as an OS user
  that may run a server, with the connection in their environment (never on a command line);
- ``leftovers``: the scratch folders a run makes, each naming its run, and what a killed run left;
- ``clone``: a physical copy of a running primary (``pg_basebackup``), started on a free port and
  removed afterwards;
- ``capture``: the primary's statements for a window, through its own logging switched on and
  back, or from a log the operator has;
- ``replay``: a capture replayed against the copy at its recorded pace (``pgreplay``), or the
  default workload an app registers when there is no capture;
- ``result``: what a forecast measured (plain data); ``measure``: ``forecast()``, which measures it;
- ``verdict``: the limits it is judged by and the problems found; ``chart``: its SVG picture;
  ``stored``: the last forecast, kept for the admin's schema page.
"""
from schema_engine.forecast.measure import forecast

__all__ = ["forecast"]
