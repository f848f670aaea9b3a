"""Load tests: Locust drives EMR traffic through HAProxy (5000 read-write, 5001 read-only).

- ``client``: the psycopg session every Locust user uses (timed, logged, reconnecting);
- ``emr``: the EMR operations and the ids they draw from the loaded data;
- ``profiles``: user mix and shape over time per ``--profile``;
- ``users``: the Locust user classes and shape (imported only by loadtests/locustfile.py);
- ``runner``: runs Locust headless and collects the run; ``report``: Markdown, JSON, PNG;
- ``background``: the load a drill runs under (``careflow-ha drill ... --under-load``).
"""
