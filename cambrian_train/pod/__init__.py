"""TPU VM pod operations through the gcloud CLI (``cambrian-pod``).

``gcloud.py`` builds the exact gcloud argument lists, ``remote.py`` the shell run on each worker,
``runner.py`` executes (or, with ``--dry-run``, prints) them, ``ops.py`` holds the operations
(create, wait, status, setup, run, logs, stop, delete), ``retry.py`` the preemption loop,
``state.py`` the local record of a pod's create and setup options, and ``cli.py`` the command line
(its docstring lists the tool's exit codes).
"""
