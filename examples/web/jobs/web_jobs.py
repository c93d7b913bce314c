"""The job the web recipes enqueue; nodes load it with `job_directory = "examples/web/jobs"`."""

import asyncio
import json
import os

from jobreactor import job


@job("web.record")
async def record(args):
    await asyncio.sleep(args.get("s", 0))  # a slow job, when the request asks for one
    out = os.environ.get("WEB_EXAMPLE_OUT")
    if out:  # one line per run: the tests check that every job ran exactly once
        line = json.dumps({"n": args["n"], "node": os.environ.get("NODE", "")}) + "\n"
        fd = os.open(os.path.join(out, "runs.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
