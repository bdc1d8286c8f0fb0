"""Recording a generation event that is cancelled while it still waits in Gradio's queue.

A running job is recorded as cancelled by ``jobs.lifecycle.run_recorded`` (the handler's
task is cancelled, the pipeline stops, the row is ended). A job cancelled *before* its handler
starts has no row yet, and Gradio 6 offers no hook for it: its ``POST /gradio_api/cancel``
route (used by both the browser's Cancel button and ``gradio_client``'s ``Job.cancel()``)
just drops the event from the queue. So :class:`QueuedCancelRecorder`, an ASGI middleware on
the server the app is mounted on, looks at each cancel request first: when the event is a
generation event of that session still waiting in its queue, it takes the event out of the
queue itself (in one synchronous step on the event loop, so the queue cannot hand it to a
worker meanwhile), ends the client's event stream as Gradio's route would, records a job row
with the request's inputs as ``cancelled`` ("cancelled while queued") and answers the request
itself. Any other cancel goes on to Gradio unchanged. Answering it here also keeps Gradio's
route from cancelling every *running* task of the same session and endpoint (it cancels by
session and fn index, not by event), so cancelling a queued job of a ``gradio_client``
session no longer kills that session's running job.

This reads Gradio's queue internals (``Queue.event_ids_to_events``,
``Queue.event_queue_per_concurrency_id[...].queue``, ``Event.data``, ``Event.fn``), as
``AppContext.queue_depth`` does; tests/test_app_queue.py pins the behaviour.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from gradio.server_messages import ProcessCompletedMessage

from ui.context import GENERATION_GROUP, AppContext
from ui.privacy import viewer

log = logging.getLogger(__name__)

CANCEL_PATH = "/gradio_api/cancel"
QUEUED_CANCEL_REASON = "cancelled while queued (before the job started)"
MAX_CANCEL_BODY = 64 * 1024  # bytes; a cancel request is a few ids

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class QueuedInputs:
    """Where a generation endpoint's request keeps its inputs (indices into its data list)."""

    source: str  # storage SOURCES value: "app" or "api"
    video: tuple[int, ...]  # first one holding a file wins (video, then still photo)
    audio: int
    model: int
    options: int | None = None  # a JSON text of options, when the endpoint takes one


# api_name -> layout; ui/generate.py registers each generation event it wires.
QUEUED_INPUTS: dict[str, QueuedInputs] = {}


def register_queued_inputs(api_name: str, layout: QueuedInputs) -> None:
    QUEUED_INPUTS[api_name] = layout


def _file_path(value: Any) -> str | None:
    """The server-side path in a Gradio file payload (FileData, or VideoData's ``video``)."""
    if isinstance(value, dict):
        if isinstance(value.get("path"), str):
            return value["path"]
        return _file_path(value.get("video"))
    return value if isinstance(value, str) and value else None


def _job_fields(layout: QueuedInputs, data: Sequence[Any]) -> dict[str, Any]:
    def at(i: int | None) -> Any:
        return data[i] if i is not None and 0 <= i < len(data) else None

    inputs: dict[str, Any] = {}
    video = next((p for p in (_file_path(at(i)) for i in layout.video) if p), None)
    audio = _file_path(at(layout.audio))
    if video:
        inputs["video"] = video
    if audio:
        inputs["audio"] = audio
    options: dict[str, Any] = {}
    raw = at(layout.options)
    if isinstance(raw, str) and raw.strip():
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            parsed = {"unparsed": raw}
        options = parsed if isinstance(parsed, dict) else {"unparsed": raw}
    model = at(layout.model)
    return {"source": layout.source, "inputs": inputs, "options": options,
            "model_requested": model if isinstance(model, str) and model else "auto"}


def take_queued_event(ctx: AppContext, event_id: str, session_hash: str | None
                      ) -> tuple[QueuedInputs, Any] | None:
    """Remove generation event ``event_id`` of session ``session_hash`` from its queue if it
    is still waiting there, and end its client's stream; returns its input layout and the
    event, or None (unknown, another session's, not a generation event, already started).

    Synchronous on purpose: no other coroutine runs between the check and the removal."""
    queue = getattr(ctx.blocks, "_queue", None) if ctx.blocks is not None else None
    event = queue.event_ids_to_events.get(event_id) if queue is not None else None
    if (event is None or event.concurrency_id != GENERATION_GROUP
            or event.session_hash != session_hash):
        return None
    layout = QUEUED_INPUTS.get(getattr(event.fn, "api_name", None) or "")
    waiting = queue.event_queue_per_concurrency_id.get(event.concurrency_id)
    if layout is None or waiting is None or event not in waiting.queue:
        return None
    waiting.queue.remove(event)
    queue.event_ids_to_events.pop(event_id, None)
    if event_id in queue.pending_event_ids_session.get(session_hash, ()):
        messages = queue.pending_messages_per_session.get(session_hash)
        if messages is not None:  # what Gradio's /cancel sends: the client stops waiting
            messages.put_nowait(ProcessCompletedMessage(output={}, success=True, event_id=event_id))
    return layout, event


def record_queued_cancel(ctx: AppContext, layout: QueuedInputs, event: Any) -> str:
    """Record the removed event as a job created and cancelled at once; returns its id."""
    data = getattr(getattr(event, "data", None), "data", None) or []
    fields = _job_fields(layout, data)
    owner = viewer(ctx, event).owner  # as a running job's (the event carries the request's names)
    job_id = ctx.store.create(**fields, user=owner)
    ctx.store.cancel(job_id, QUEUED_CANCEL_REASON)
    log.info("job %s (%s) cancelled while queued", job_id, fields["source"])
    return job_id


async def cancel_queued(ctx: AppContext, event_id: str, session_hash: str | None) -> bool:
    """Take ``event_id`` out of the queue and record it; False when it was not queued.
    A recording failure is logged: the cancel itself has happened and stays done."""
    taken = take_queued_event(ctx, event_id, session_hash)
    if taken is None:
        return False
    try:
        await asyncio.to_thread(record_queued_cancel, ctx, *taken)
    except Exception:  # noqa: BLE001 - never turn a cancel into an error for the user
        log.exception("could not record the queued event %s as cancelled", event_id)
    return True


async def _answer_success(send: Send) -> None:
    body = b'{"success":true}'  # Gradio's own /cancel answer
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class QueuedCancelRecorder:
    """ASGI middleware: records queued generation events cancelled via /gradio_api/cancel."""

    def __init__(self, app: ASGIApp, *, ctx: AppContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope.get("method") != "POST"
                or not scope.get("path", "").endswith(CANCEL_PATH)):
            await self.app(scope, receive, send)
            return
        body, more, messages = b"", True, []
        while more and len(body) <= MAX_CANCEL_BODY:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = None
        if isinstance(request, dict) and isinstance(request.get("event_id"), str):
            if await cancel_queued(self.ctx, request["event_id"], request.get("session_hash")):
                await _answer_success(send)
                return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)
