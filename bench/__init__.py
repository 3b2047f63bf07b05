"""The benchmark of issue 5: every workload timed against the tool people would use instead.

Run it with ``python -m bench.run`` (``--quick`` for the small CI size); docs/performance.md
explains each row and keeps the latest table. The modules:

``datasets``
    builds the data sets (random files, many small files, a name with many versions).
``measure``
    runs one command and reads its wall time and its own peak RSS (``wait4``).
``workloads``
    each workload beside its anchor, alternating, against the real ``archive`` CLI.
``report``
    pure helpers: medians, ratios, the target checks, the table as text, markdown and JSON.
``plot``
    the throughput plot, with matplotlib imported only when it is installed.

Another module may add rows: if ``bench/sftp.py`` exists and defines
``workloads(ctx: bench.workloads.Context) -> list[bench.report.Row]``, ``bench.run`` calls it
after the folder workloads, in the same run.
"""
