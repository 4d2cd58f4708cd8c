"""Read-only views of the store, shared by every front end.

Queries and JSON-ready data built from records: the CLI's ``--json`` prints
them, its rich views and the web UI draw from them. Nothing here imports the
engine's internals or a terminal library; a view reads the store and returns
plain data.

- :mod:`.format`: times, durations, sizes, recorded values as text, and
  :func:`~.format.visible`, which makes user text safe to show on a terminal;
- :mod:`.runs`: runs and task runs (lists, one run with its page of task runs);
- :mod:`.results`: stored task results, read back (``flowcore.task_result``);
- :mod:`.cache`: cache entries; :mod:`.trace`: a run's spans; :mod:`.limits`:
  shared limits;
- :mod:`.graph`: a run's task graph (task runs, or task names aggregated for big
  runs); :mod:`.timeline`: a page of task runs as Gantt bars with their attempts;
  :mod:`.triggers`: a trigger's parameter names checked against a served flow's schema;
- :mod:`.assets`: assets with their statuses, one asset's history, lineage trees.
"""

from .format import json_fallback, to_json, visible

__all__ = ["json_fallback", "to_json", "visible"]
