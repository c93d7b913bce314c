"""The second application (the Ruby example's application2.rb): same code, another port.

    python app2.py [PORT] [--jobs N] [--errors K] [--timeout S]

Its distributor listens on 127.0.0.1:PORT (default $APP2_PORT or 5101) and it enqueues twice
as fast. The same three nodes serve both applications; each feedback goes back to the
distributor that enqueued the job. See app.py.
"""

from __future__ import annotations

import sys

from app import run  # app.py sits beside this file, and the script's directory is on sys.path

if __name__ == "__main__":
    sys.exit(run("app2", 5101, "APP2_PORT", interval_s=0.0005))
