# Flask under gunicorn: see gunicorn_hooks.py for where the reactor starts and stops.
# Nothing starts at import: under --preload this module is imported in the master, before
# the fork, and a reactor started there would be unusable in every worker.
from common import enqueue
from flask import Flask, request

app = Flask(__name__)


@app.get("/hello")
def hello() -> str:
    return "hello"


@app.get("/enqueue/<int:n>")
def enqueue_one(n: int) -> dict[str, object]:
    return enqueue(n, float(request.args.get("s", 0)))  # ?s=: the job sleeps that long
