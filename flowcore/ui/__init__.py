"""The web UI (``flowcore ui``): the store's runs, task graphs, timelines, traces, logs,
served flows, schedules and limits, assets with their lineage, partitions and history,
as server-rendered pages; actions only when asked.

It reads through :mod:`flowcore.views`, never the engine. Installed with an extra,
``pip install 'flowcore[ui]'`` (Starlette, uvicorn, jinja2): importing
:mod:`flowcore.ui.app` without them raises ``ImportError``, which ``flowcore ui`` turns
into a message saying what to install.

A module per role: :mod:`.config` (what the server was started with), :mod:`.security`
(who may ask what: token, CSRF, hosts, headers), :mod:`.templating` (escaping and
formats), :mod:`.pages` (what every page shares), a module per area (:mod:`.runs`,
:mod:`.run`, :mod:`.flows`, :mod:`.assets`), :mod:`.actions` (the POST routes, present
only with ``--allow-actions``) and :mod:`.app`, which puts them together.
"""
