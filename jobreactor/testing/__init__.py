"""Testing your jobs: an in-process job system, an eager mode, and a pytest plugin.

- `running_system(jobs)`: JR with a distributor and a memory node on loopback, for
  integration tests; `JobSystem.wait_idle()` and `.outcomes` (every feedback, waitable).
- `EagerMode(JR, jobs=...)`: `JR.enqueue` runs the job inline and calls its feedbacks before
  it returns, with the node's own retry, callback and cancel rules; delays are skipped.
- The pytest plugin (`jobreactor.testing.plugin`, registered through the `pytest11` entry
  point) gives both as fixtures: `jobreactor_system` and `jobreactor_eager`.

See the README section "Testing your jobs".
"""

from __future__ import annotations

from jobreactor.testing.eager import EagerMode
from jobreactor.testing.recording import Outcome, OutcomeLog
from jobreactor.testing.system import JobSystem, running_system

__all__ = ["EagerMode", "JobSystem", "Outcome", "OutcomeLog", "running_system"]
