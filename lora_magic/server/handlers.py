"""REST handlers under `<base_url>/lora-magic/`. All need an authenticated user; POST needs XSRF too.

GET  runs?limit=200&after=<run>
                               a page of run summaries, newest first (an unreadable run says why),
                               and `next`: the run to ask for the next page after, or null
GET  runs/<name>               run.json: config, status, progress, metrics
GET  runs/<name>/events?offset=0&limit=1000
                               a page of events from a byte offset, the offset of the next page,
                               and whether more events were there already
POST runs/<name>/stop          ask the run to stop at its next step
GET  notebook-template         the notebook the launcher's "New LoRA fine-tuning notebook" opens

Files are read in a worker thread, so a large events file never holds up the server. A bad
request is a 4xx with a message, never a 500.
"""

from __future__ import annotations

import asyncio
import json
import math
from importlib.resources import files
from typing import Any

import tornado.web
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from ..core.errors import RunError
from ..core.store import RunStore

SUMMARY_KEYS = (
    "name",
    "status",
    "created",
    "updated",
    "started",
    "finished",
    "model",
    "quantization",
    "step",
    "total_steps",
    "metrics",
    "error",
    "warning",
    "adapter_path",
)
NAME = r"(?P<name>[^/]+)"
PAGE = 1000  # events per page unless the client asks for fewer or more
MAX_PAGE = 10_000
RUNS_PAGE = 200  # runs per page of the listing, newest first
MAX_RUNS_PAGE = 1000


def to_json(data: Any) -> str:
    """JSON that browsers parse: NaN and infinite numbers (a diverged loss) become null."""
    return json.dumps(_finite(data), default=str, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


class LoraHandler(APIHandler):
    auth_resource = "lora_magic"

    @property
    def store(self) -> RunStore:
        return self.settings["lora_magic_store"]

    def checked_run(self, name: str) -> str:
        """The run's name once it is known to be valid, inside the store and present."""
        try:
            present = self.store.exists(name)
        except RunError as error:
            raise tornado.web.HTTPError(400, str(error)) from None
        if not present:
            raise tornado.web.HTTPError(404, f"no run named {name!r}")
        return name

    def whole_number(self, argument: str, default: int, least: int) -> int:
        text = self.get_query_argument(argument, str(default))
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise tornado.web.HTTPError(
                400, f"{argument}={text!r}: it must be a whole number, {least} or more"
            )
        return value


class RunsHandler(LoraHandler):
    @tornado.web.authenticated
    @authorized
    async def get(self):
        limit = min(self.whole_number("limit", RUNS_PAGE, least=1), MAX_RUNS_PAGE)
        after = self.get_query_argument("after", None)
        try:
            self.finish(await asyncio.to_thread(self._page, limit, after))
        except RunError as error:
            raise tornado.web.HTTPError(400, str(error)) from None

    def _page(self, limit: int, after: str | None) -> str:
        """The page as JSON, read and encoded off the event loop."""
        records, next_after = self.store.page(limit, after)
        runs = [{key: record.get(key) for key in SUMMARY_KEYS} for record in records]
        return to_json({"root": str(self.store.root), "runs": runs, "next": next_after})


class RunHandler(LoraHandler):
    @tornado.web.authenticated
    @authorized
    async def get(self, name: str):
        name = self.checked_run(name)
        try:
            record = await asyncio.to_thread(self.store.summary, name)
        except RunError as error:  # removed between the check and the read
            raise tornado.web.HTTPError(404, str(error)) from None
        self.finish(await asyncio.to_thread(to_json, record))


class EventsHandler(LoraHandler):
    @tornado.web.authenticated
    @authorized
    async def get(self, name: str):
        name = self.checked_run(name)
        offset = self.whole_number("offset", 0, least=0)
        limit = min(self.whole_number("limit", PAGE, least=1), MAX_PAGE)
        try:
            events, next_offset = await asyncio.to_thread(self.store.events, name, offset, limit)
        except RunError as error:
            raise tornado.web.HTTPError(400, str(error)) from None
        page = {"events": events, "offset": next_offset, "more": len(events) == limit}
        self.finish(await asyncio.to_thread(to_json, page))


class StopHandler(LoraHandler):
    @tornado.web.authenticated
    @authorized
    async def post(self, name: str):
        name = self.checked_run(name)
        try:
            await asyncio.to_thread(self.store.request_stop, name)
        except RunError as error:
            raise tornado.web.HTTPError(409, str(error)) from None
        self.set_status(202)
        self.finish(to_json({"name": name, "stop_requested": True}))


class TemplateHandler(LoraHandler):
    @tornado.web.authenticated
    @authorized
    def get(self):
        self.finish((files("lora_magic") / "notebook_template.ipynb").read_text(encoding="utf-8"))


def handlers(base_url: str) -> list[tuple[str, type]]:
    def url(*parts: str) -> str:
        return url_path_join(base_url, "lora-magic", *parts)

    return [
        (url("runs"), RunsHandler),
        (url("runs", NAME), RunHandler),
        (url("runs", NAME, "events"), EventsHandler),
        (url("runs", NAME, "stop"), StopHandler),
        (url("notebook-template"), TemplateHandler),
    ]
