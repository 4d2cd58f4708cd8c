"""A scheduled flow: serve it, trigger it, watch its runs.

Start a server in one terminal::

    flowcore serve examples/scheduled.py

It fires ``report`` every 10 seconds (with ``window=10``) and every five minutes,
Europe/Paris time (with ``window=300``); each run knows the slot it was started for
and the data interval that slot covers (``flowcore.current_flow_run()``), and logs
through ``flowcore.get_run_logger()``. In another terminal::

    flowcore flows ls                          # what is served, and when it fires next
    flowcore trigger report --param window=60  # a run by hand, picked up within a second
    flowcore runs ls                           # the runs, scheduled and triggered
    flowcore runs logs <run id>                # one run's log lines
    flowcore schedules pause report            # stop firing (resume: schedules resume)

Stop the server with Ctrl-C: runs in flight get ``--grace`` seconds to finish.
A ``window`` that is not an integer (``--param window=soon``) is refused before the
run starts: the run is recorded Failed with the reason, and ``on_failure`` is told.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import flowcore

log = logging.getLogger("examples.scheduled")


def tell(event: flowcore.HookEvent) -> None:
    """A failure hook: here it prints; ``flowcore.hooks.webhook(url)`` would post it."""
    print(f"run {event.run_id} of {event.name}: {event.kind}: {event.exception!r}")


@flowcore.task
async def measure(window: int, start: float | None) -> int:
    """Stand-in for the work of one slot: count what arrived in its interval."""
    flowcore.get_run_logger().info("measuring %d seconds from %s", window, start)
    return window * 7


@flowcore.flow(
    schedule=[
        flowcore.every(seconds=10, parameters={"window": 10}),
        flowcore.cron("*/5 * * * *", tz="Europe/Paris", parameters={"window": 300}),
    ],
    on_failure=[tell],
)
async def report(window: int = 10) -> int:
    """Count the records of the last ``window`` seconds (the schedule's slot says which)."""
    run = flowcore.current_flow_run()
    logger = flowcore.get_run_logger()
    if run.scheduled_for is not None:
        logger.info(
            "slot %s covers %s to %s",
            run.scheduled_for.isoformat(),
            run.interval_start.isoformat() if run.interval_start else "?",
            run.interval_end.isoformat() if run.interval_end else "?",
        )
    else:
        logger.info("started by %s at %s", run.launched_by or "a call", datetime.now(UTC))
    start = run.interval_start.timestamp() if run.interval_start else None
    return await measure(window, start)


if __name__ == "__main__":
    print(flowcore.run(report, window=5))
