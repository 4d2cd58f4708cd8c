"""``flowcore serve``: a long-running process that fires its flows' schedule slots and
the runs triggered for them, from any number of processes sharing a store.

- :mod:`.api`: ``serve`` / ``aserve``, options and signals;
- :mod:`.server`: the server: wakes, claims, runs, stops (read its docstring for how
  a slot fires exactly once, with no gap);
- :mod:`.crashes`: crashed runs found while serving, and ``on_crashed_found``;
- :mod:`.launches`: the run rows a claim inserts; :mod:`.registry`: what the store
  keeps of served flows and schedules; :mod:`.logs`: the ``flowcore.serve`` logger.
"""

from .api import aserve, serve
from .crashes import on_crashed_found
from .server import Server

__all__ = ["Server", "aserve", "on_crashed_found", "serve"]
