"""The inbox's event trigger: Airflow's triggerer watches the folder, and each new file is an asset event.

:class:`InboxTrigger` is a ``BaseEventTrigger``, the kind of trigger an ``AssetWatcher`` takes
(:func:`bnpipe.operations.assets.inbox` puts it on the asset ``bnpipe://inbox``). The triggerer runs
it for as long as the inbox DAG is unpaused: every ``poll_seconds`` it scans the folder with an
:class:`~bnpipe.operations.inbox.Watcher`, in a worker thread so the triggerer's event loop never
waits on the disk, and yields one ``TriggerEvent`` per announced file. Airflow stores each as an
event of the asset, with the announcement as ``extra["payload"]``, and the event schedules a run
of the inbox DAG.

The triggerer re-creates the trigger from :meth:`InboxTrigger.serialize` (after a restart, or on
another triggerer): its kwargs are the folder and the two intervals, and its only state, the
watcher's memory, may be lost; the markers the DAG run writes are the durable record
(:mod:`bnpipe.operations.inbox`). It runs until the triggerer cancels it, so it takes no timeout.

Imports: Airflow's trigger base and :mod:`bnpipe.operations.inbox` (standard library), nothing heavy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from bnpipe.operations import inbox

POLL_SECONDS = 1.0


class InboxTrigger(BaseEventTrigger):
    """Yield an event per new, settled data file in ``directory`` (:class:`~bnpipe.operations.inbox.Watcher`)."""

    def __init__(
        self, *, directory: str, poll_seconds: float = POLL_SECONDS, settle_seconds: float = inbox.SETTLE_SECONDS
    ):
        super().__init__()
        self.directory = directory
        self.poll_seconds = poll_seconds
        self.settle_seconds = settle_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{__name__}.{type(self).__qualname__}",
            {"directory": self.directory, "poll_seconds": self.poll_seconds, "settle_seconds": self.settle_seconds},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        watcher = inbox.Watcher(Path(self.directory), self.settle_seconds)
        self.log.info("watching %s every %.1f s", self.directory, self.poll_seconds)
        while True:
            try:
                announced = await asyncio.to_thread(watcher.poll)
            except OSError as exc:  # the folder unreadable for now (permissions, a network mount): keep watching
                self.log.warning("cannot scan %s: %s; trying again in %.1f s", self.directory, exc, self.poll_seconds)
                announced = []
            for item in announced:
                self.log.info("new file %s (digest %s)", item["path"], item["digest"])
                yield TriggerEvent(item)
            await asyncio.sleep(self.poll_seconds)
