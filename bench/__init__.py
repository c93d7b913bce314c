"""jobreactor's benchmark suite (issue 6): `python -m bench [--quick] [--storage ...] [--only ...]`.

Workloads: throughput (enqueue and end-to-end rates, verified), latency (enqueue→start,
enqueue→feedback), delayed-job lateness, memory per pending job, idle CPU. Nodes run as separate
processes through the CLI; the app (this process) enqueues from a plain thread. Output: a markdown
table on stdout and a JSON record in bench/results/.
"""
