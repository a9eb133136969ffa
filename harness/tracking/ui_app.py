"""The MLflow UI as `harness ui` serves it: MLflow's own app, opening in "Model training" mode.

MLflow 3's UI keeps one global workflow type, GenAI unless a page's address says
`?workflowType=machine_learning` (our printed links do) or the browser's local storage holds
`mlflow.workflowType_v1` (written when a person flips the GenAI / Model training switch). So the
bare address, typed by hand, opens the GenAI home (traces, judges, prompts). This app hands every
request to MLflow's and changes one response: the UI's page (GET /, the one page whose routes follow
'#') gets a line of script at the top of its head that sets that key to machine_learning where the
browser has none. A person's own flip of the switch stays theirs.

`harness ui` starts it through MLflow's app plugin hook (`mlflow ui --app-name harness`, the
`mlflow.app` entry point in pyproject.toml), so MLflow still sets the server up: store, workers,
its security middleware (which sees every request, this one included).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

# MLflow's UI reads its workflow type with useLocalStorage({key: "mlflow.workflowType", version: 1}),
# stored as JSON under "<key>_v<version>" (mlflow/server/js, 3.x); the values are "genai" and this one
WORKFLOW_STORAGE_KEY = "mlflow.workflowType_v1"
MODEL_TRAINING = "machine_learning"
_KEY, _VALUE = json.dumps(WORKFLOW_STORAGE_KEY), json.dumps(json.dumps(MODEL_TRAINING))  # JS literals
DEFAULT_SCRIPT = (
    f"<script>try{{if(!localStorage.getItem({_KEY}))localStorage.setItem({_KEY},{_VALUE})}}catch(e){{}}</script>"
).encode()

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]


def create_app() -> ASGIApp:
    """The app factory the entry point names (uvicorn --factory): MLflow's app, wrapped."""
    from mlflow.server.fastapi_app import app as mlflow_app

    return ModelTrainingLanding(mlflow_app)


def with_model_training_default(page: bytes) -> bytes:
    """The UI's HTML page with DEFAULT_SCRIPT first in its head (before MLflow's deferred bundle)."""
    at = page.lower().find(b"<head>")
    at = 0 if at < 0 else at + len(b"<head>")
    return page[:at] + DEFAULT_SCRIPT + page[at:]


class ModelTrainingLanding:
    """ASGI middleware: `inner`'s responses, the page at GET / with the model-training default."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET" or scope.get("path") != "/":
            await self.inner(scope, receive, send)
            return
        start: Message = {}
        chunks: list[bytes] = []

        async def hold(message: Message) -> None:  # the page is a few KB: held whole, then sent changed
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await _send_page(send, start, b"".join(chunks))
            else:
                await send(message)

        await self.inner(scope, receive, hold)


async def _send_page(send, start: Message, body: bytes) -> None:
    headers = [(k.lower(), v) for k, v in start.get("headers", [])]
    kinds = dict(headers)
    if (
        start.get("status") == 200
        and kinds.get(b"content-type", b"").startswith(b"text/html")
        and (b"content-encoding" not in kinds)
    ):
        body = with_model_training_default(body)
        # a changed page: its length anew, and no validators a browser would revalidate the old one with
        dropped = (b"content-length", b"etag", b"last-modified")
        headers = [(k, v) for k, v in headers if k not in dropped] + [
            (b"content-length", str(len(body)).encode())
        ]
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
