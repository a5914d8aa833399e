"""`bonito review`: the review app served by uvicorn on a socket bound here (so a port in use is
one sentence, and `--port 0` names the port it got before the server starts). The server writes
only the store's reviews table, in short transactions beside a running `bonito generate`
(SQLite WAL), and never takes the run's lock."""

from __future__ import annotations

import errno
import ipaddress
import os
import secrets
import socket
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from bonito.errors import BonitoError
from bonito.publish.review.app import LOOPBACK, TOKEN, create_app
from bonito.publish.review.queue import draw_sample
from bonito.runs.run import status_facts, stored
from bonito.runs.store import STORE_FILE, RunStore


@dataclass
class ReviewServer:
    """A review server bound and listening, not yet serving: its URL, and what to tell the
    person first (one sentence each)."""

    url: str
    notes: list[str]
    sock: socket.socket
    store: RunStore
    app: object = field(repr=False)

    def serve(self) -> None:
        """Answer requests until interrupted."""
        import uvicorn

        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False)
        try:
            uvicorn.Server(config).run(sockets=[self.sock])
        finally:
            self.sock.close()
            self.store.close()


def open_review(
    run: Path, host: str = "127.0.0.1", port: int = 0, sample: int | None = None
) -> ReviewServer:
    """Check the run, open its store for decisions, draw the sample, bind HOST:PORT."""
    if sample is not None and sample < 1:
        raise BonitoError(f"sample (--sample) must be at least 1, got {sample}.")
    status_facts(run)  # one sentence when RUN is not a run, or a damaged or newer one
    notes = []
    with stored(run) as old:
        if not old.has_reviews:
            notes.append(
                f"{run / STORE_FILE} was written by an older bonito; the reviews table is added "
                "to it, and the run is otherwise left as it was."
            )
        seed = old.get("config")["sampling"].get("seed") or 0
    store = open_store(run)
    try:
        drawn = draw_sample(store, sample, seed) if sample is not None else None
        sock, address = bind(host, port)
    except BaseException:
        store.close()
        raise
    port = sock.getsockname()[1]
    where = f"[{address}]" if ":" in address else address
    loopback = ipaddress.ip_address(address).is_loopback
    token = None if loopback else secrets.token_urlsafe(24)
    hosts = {f"{name}:{port}" for name in (*LOOPBACK, host)} if loopback else None
    if not loopback:
        notes.append(
            f"Listening on {host}, beyond this machine: anyone who can reach it and has the "
            "URL below (its token) can read the run and change its reviews."
        )
    url = f"http://{where}:{port}/" + (f"?{TOKEN}={token}" if token else "")
    if drawn is not None:
        notes.append(
            f"Reviewing a seeded sample of {len(drawn)} tasks: sample (--sample) is {sample}."
        )
    app = create_app(run, store, sample=drawn, hosts=hosts, token=token)
    return ReviewServer(url, notes, sock, store, app)


def open_store(run: Path) -> RunStore:
    """The run's store opened for writing decisions (the reviews table added to an older one)."""
    path = run / STORE_FILE
    if not (os.access(path, os.W_OK) and os.access(run, os.W_OK)):
        raise BonitoError(
            f"bonito review saves decisions in {path}, which this user cannot write; review as "
            "the user who owns the run, or make the folder and file writable."
        )
    try:
        return RunStore(path)
    except sqlite3.Error as error:
        raise BonitoError(
            f"Cannot open {path} to save decisions ({error}); run the command again, and if it "
            "fails again, check the file."
        ) from error


def bind(host: str, port: int) -> tuple[socket.socket, str]:
    """A listening TCP socket on host:port, and the address it is bound to."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise BonitoError(
            f"host (--host) {host} is not an address of this machine ({error})."
        ) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise BonitoError(
                f"Port {port} on {host} is in use; pass another port (--port), or port 0 for a "
                "free one."
            ) from None
        raise BonitoError(
            f"Cannot listen on {host} port {port} ({error.strerror or error}); pass host "
            "(--host) 127.0.0.1, or an address of this machine and a port above 1023."
        ) from None
    return sock, sock.getsockname()[0]
