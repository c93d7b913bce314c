# Flask under gunicorn: see gunicorn.conf.py for where the reactor starts and stops.
# Nothing starts at import: under --preload this module is imported in the master, before
# the fork, and a reactor started there would be unusable in every worker.
from common import enqueue
from flask import Flask

app = Flask(__name__)


@app.get("/hello")
def hello() -> str:
    return "hello"


@app.get("/enqueue/<int:n>")
def enqueue_one(n: int) -> dict[str, object]:
    return enqueue(n)
