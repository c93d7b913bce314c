"""The mistake ReactorForkedError is for: JR started at import, under gunicorn --preload.

The master imports this module (and so starts the reactor) before it forks the workers.
"""

from __future__ import annotations

import time

from flask import Flask

from jobreactor import JR, ReactorClosed

JR.run()
JR.start_distributor("127.0.0.1", 0)
app = Flask(__name__)


@app.get("/hello")
def hello() -> str:
    return "hello"


@app.get("/enqueue")
def enqueue() -> dict[str, object]:
    start = time.monotonic()
    try:
        JR.enqueue("web.record", {"n": 0})
    except ReactorClosed as exc:
        return {"raised": type(exc).__name__, "message": str(exc), "s": time.monotonic() - start}
    return {"raised": None}
