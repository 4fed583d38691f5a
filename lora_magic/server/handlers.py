"""REST handlers under `<base_url>/lora-magic/`. All need an authenticated user; POST needs XSRF too.

GET  runs                      summaries of every run, newest first
GET  runs/<name>               run.json: config, status, progress, metrics
GET  runs/<name>/events?offset events from a byte offset, and the offset to ask for next
POST runs/<name>/stop          ask the run to stop at its next step
GET  notebook-template         the notebook the launcher's "New LoRA fine-tuning notebook" opens
"""

from __future__ import annotations

import json
from importlib.resources import files

import tornado.web
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from ..errors import RunError
from ..runs import RunStore

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
    "adapter_path",
)
NAME = r"(?P<name>[^/]+)"


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

    def read(self, name: str) -> dict:
        try:
            return self.store.read(self.checked_run(name))
        except RunError as error:  # removed between the check and the read
            raise tornado.web.HTTPError(404, str(error)) from None


class RunsHandler(LoraHandler):
    @tornado.web.authenticated
    @authorized
    def get(self):
        runs = []
        for name in self.store.names():
            try:
                record = self.store.read(name)
            except (RunError, ValueError):  # removed or half-created while listing
                continue
            runs.append({key: record.get(key) for key in SUMMARY_KEYS} | {"name": name})
        self.finish(json.dumps({"root": str(self.store.root), "runs": runs}, default=str))


class RunHandler(LoraHandler):
    @tornado.web.authenticated
    @authorized
    def get(self, name: str):
        self.finish(json.dumps(self.read(name), default=str))


class EventsHandler(LoraHandler):
    @tornado.web.authenticated
    @authorized
    def get(self, name: str):
        try:
            offset = int(self.get_query_argument("offset", "0"))
        except ValueError:
            offset = -1
        if offset < 0:
            raise tornado.web.HTTPError(400, "offset must be a whole number of bytes, 0 or more")
        events, next_offset = self.store.events(self.checked_run(name), offset)
        self.finish(json.dumps({"events": events, "offset": next_offset}, default=str))


class StopHandler(LoraHandler):
    @tornado.web.authenticated
    @authorized
    def post(self, name: str):
        name = self.checked_run(name)
        try:
            self.store.request_stop(name)
        except RunError as error:
            raise tornado.web.HTTPError(409, str(error)) from None
        self.set_status(202)
        self.finish(json.dumps({"name": name, "stop_requested": True}))


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
