"""What every tab shares: the settings, the job store and (once built) the Blocks and its queue."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from jobs.executors import Executor
from jobs.settings import Settings
from storage.jobs import JobStore

GENERATION_GROUP = "generation"  # the one concurrency_id of every event that runs the pipeline
SCORING_GROUP = "scoring"  # scoring has its own lane: it never waits behind generation
READ_GROUP = "history"  # history/job reads: their own lane, no limit


@dataclass
class AppContext:
    settings: Settings
    store: JobStore
    blocks: gr.Blocks | None = None
    executor: Executor | None = None  # where generation runs (jobs.executors)
    examples: dict[str, str] = field(default_factory=dict)

    def queue_depth(self) -> dict[str, Any]:
        """Events waiting in Gradio's queue, per concurrency group, and events running now."""
        queue = getattr(self.blocks, "_queue", None) if self.blocks is not None else None
        if queue is None:
            return {"waiting": 0, "running": 0, "max_size": None, "groups": {}}
        groups = {cid: {"waiting": len(q.queue), "running": q.current_concurrency,
                        "limit": q.concurrency_limit}
                  for cid, q in queue.event_queue_per_concurrency_id.items()}
        return {"waiting": len(queue), "running": sum(g["running"] for g in groups.values()),
                "max_size": queue.max_size, "groups": groups}
