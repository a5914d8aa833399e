"""The review web app (Starlette): one task at a time beside its passage, decisions saved at once
in the run store. Every response carries a Content-Security-Policy that lets the page load only
the server's own script and style sheet; every request is checked against the Host it was sent
to (a page of another site rebound to this address is refused) and, when the server listens
beyond loopback, against the token in its URL; every write must come from the page itself (its
own header, JSON, the server's origin)."""

from __future__ import annotations

import hmac
from dataclasses import asdict, astuple
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bonito import __version__
from bonito.publish.review.queue import REVIEW_STATES, Filters, Queue
from bonito.runs.reviews import DECISIONS, Decision, decide, tally, undo
from bonito.runs.run import identity, running
from bonito.runs.store import STORE_FILE, RunStore

HERE = Path(__file__).parent
REASONS = (
    "wrong answer",
    "not answerable from the passage",
    "unclear or broken instruction",
    "not the task type asked for",
    "other",
)
"""The reasons a person picks from with the keys 1-5 (or types their own)."""
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
WRITE_HEADER = "x-bonito-review"
"""The header every write carries: a page of another site cannot send it without this server's
consent (a CORS preflight it never gives)."""
TOKEN = "token"
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
NO_FILTERS = Filters()


class Guard:
    """ASGI middleware: refuse requests to another Host, without the token (when there is one),
    or writes that may come from another site; add the security headers to every response."""

    def __init__(self, app, hosts: set[str] | None, token: str | None) -> None:
        self.app, self.hosts, self.token = app, hosts, token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def secured(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        refused = self.refusal(scope)
        if refused:
            return await JSONResponse({"error": refused[1]}, refused[0])(scope, receive, secured)
        await self.app(scope, receive, secured)

    def refusal(self, scope) -> tuple[int, str] | None:
        """Why the request is refused, as (status, sentence), or None."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if self.hosts is not None and host not in self.hosts:
            return 403, f"This server answers only at {sorted(self.hosts)[0]}; open that address."
        if self.token is not None:
            given = parse_qs(scope.get("query_string", b"").decode()).get(TOKEN, [""])[0]
            given = headers.get("x-bonito-token", given)
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return 403, "This server needs the token in the URL it printed; open that URL."
        if scope["method"] not in ("GET", "HEAD"):
            origin = headers.get("origin")
            if (
                headers.get(WRITE_HEADER) != "1"
                or not headers.get("content-type", "").startswith("application/json")
                or (origin is not None and origin != f"http://{host}")
            ):
                return 403, "Decisions are saved only from the review page of this server."
        return None


class Review:
    """The run a server reviews: its store (one connection, used on the event loop's thread),
    the sample it walks, and the page's template."""

    def __init__(self, run: Path, store: RunStore, sample: list[str] | None, token: str | None):
        self.run, self.store, self.sample, self.token = run, store, sample, token
        self.queue = Queue(store, sample)
        self.identity = identity(run / STORE_FILE)
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.page = env.get_template("review.html.j2")

    def url(self, path: str, filters: Filters = NO_FILTERS) -> str:
        """A path of this server with the filters and the token."""
        query = filters.query()
        if self.token:
            query += ("&" if query else "") + f"{TOKEN}={self.token}"
        return f"{path}?{query}" if query else path

    def replaced(self) -> Response | None:
        """A refusal when the run's store was replaced under the server (a `bonito generate
        --overwrite`): the decisions would go to tasks of another run."""
        try:
            same = identity(self.run / STORE_FILE) == self.identity
        except FileNotFoundError:
            same = False
        if same:
            return None
        return JSONResponse(
            {
                "error": f"{self.run} was started over while this server ran; restart `bonito "
                "review` to review the run that is there now."
            },
            409,
        )

    async def home(self, request: Request) -> Response:
        filters = Filters.of(request.query_params)
        first = self.queue.first(filters)
        if first is not None:
            return RedirectResponse(self.url(f"/task/{first}", filters), 303)
        return self.render(filters, None)

    async def show(self, request: Request) -> Response:
        filters = Filters.of(request.query_params)
        task = self.queue.task(request.path_params["task"])
        if task is None:
            return HTMLResponse(f"No task {request.path_params['task']} in this run.", 404)
        return self.render(filters, task)

    def render(self, filters: Filters, task: dict[str, Any] | None) -> HTMLResponse:
        here = task["id"] if task else None
        neighbours = {
            name: self.queue.neighbour(filters, here, step) if here else None
            for name, step in (("previous", -1), ("next", +1))
        }
        context = {
            "run": self.run.name,
            "version": __version__,
            "task": task,
            "filters": filters,
            "options": self.queue.options(),
            "review_states": REVIEW_STATES,
            "progress": self.queue.progress(filters, here),
            "running": running(self.run),
            "sample": len(self.sample) if self.sample is not None else None,
            "precision": tally(self.store),
            "reasons": REASONS,
            "token": self.token or "",
            "links": {
                name: self.url(f"/task/{found}", filters) if found else ""
                for name, found in neighbours.items()
            }
            | {
                "filters": self.url("/"),
                "here": self.url(f"/task/{here}" if here else "/", filters),
            },
            "api": {
                "decision": self.url(f"/api/tasks/{here}/decision", filters) if here else "",
                "undo": self.url("/api/undo", filters),
            },
        }
        return HTMLResponse(self.page.render(context))

    async def task_json(self, request: Request) -> Response:
        task = self.queue.task(request.path_params["task"])
        if task is None:
            return JSONResponse({"error": "No such task in this run."}, 404)
        decision = task["decision"]
        return JSONResponse(task | {"decision": asdict(decision) if decision else None})

    async def progress(self, request: Request) -> Response:
        filters = Filters.of(request.query_params)
        return JSONResponse(self.queue.progress(filters) | {"review": tally(self.store).to_dict()})

    async def decide(self, request: Request) -> Response:
        task = request.path_params["task"]
        if refused := self.replaced():
            return refused
        shown = self.queue.task(task)
        if shown is None:
            return JSONResponse({"error": f"No task {task} in this run."}, 404)
        try:
            body = await request.json()
            decision = Decision(
                body["decision"], body.get("input"), body.get("output"), body.get("reason")
            )
        except (ValueError, KeyError, TypeError):
            decision = None
        if (
            decision is None
            or decision.decision not in DECISIONS
            or not all(isinstance(v, str | None) for v in astuple(decision)[1:4])
            or (decision.decision == "rejected") != bool(str(decision.reason or "").strip())
            or (decision.edited and decision.decision != "accepted")
        ):
            return JSONResponse(
                {
                    "error": 'Send {"decision": "accepted"} (with "input" and "output" when '
                    'edited) or {"decision": "rejected", "reason": "why"}.'
                },
                400,
            )
        whole = decision.applied(shown)
        if decision.decision == "accepted" and not (whole["input"] and whole["output"]):
            return JSONResponse(
                {"error": "This sample has no instruction or no answer: edit it (e) to give both."},
                400,
            )
        saved = decide(self.store, task, decision)
        after = self.queue.neighbour(Filters.of(request.query_params), task, +1)
        return JSONResponse(
            {
                "task": task,
                "decision": asdict(saved),
                "next": self.url(f"/task/{after}", Filters.of(request.query_params))
                if after
                else None,
            }
        )

    async def undo(self, request: Request) -> Response:
        if refused := self.replaced():
            return refused
        task = undo(self.store)
        filters = Filters.of(request.query_params)
        return JSONResponse(
            {"task": task, "url": self.url(f"/task/{task}" if task else "/", filters)}
        )


def create_app(
    run: Path,
    store: RunStore,
    *,
    sample: list[str] | None = None,
    hosts: set[str] | None = None,
    token: str | None = None,
) -> Guard:
    """The review app of `run` over its open `store`; `hosts`: the Host headers it answers
    (None: any), `token`: the token every request must carry (None: none)."""
    review = Review(run, store, sample, token)
    app = Starlette(
        routes=[
            Route("/", review.home),
            Route("/task/{task:str}", review.show),
            Route("/api/tasks/{task:str}", review.task_json),
            Route("/api/tasks/{task:str}/decision", review.decide, methods=["POST"]),
            Route("/api/undo", review.undo, methods=["POST"]),
            Route("/api/progress", review.progress),
            Route("/favicon.ico", lambda request: Response(status_code=204)),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
    )
    return Guard(app, hosts, token)
