"""`t2vrt serve`: a web page and an OpenAI-compatible video API over a persistent job queue.

store.py     jobs in SQLite (WAL): every state change is one transaction
files.py     the --state directory: uploads and results under server-made names only
uploads.py   input_reference bytes checked by content (magic numbers), data: URLs
params.py    request fields -> one validated job, with the CLI's messages
executor.py  the Executor interface (job dict -> progress -> result files) and the local, in-process one
worker.py    the one thread that owns the executor: jobs in order, progress, cancel, drain, expiry
api.py       the FastAPI app: /v1/videos, /v1/models, SSE progress, the page
limits.py    request-size and API-key middleware
server.py    uvicorn with SIGTERM draining

--ray (issue 15; only these import Ray, and only when --ray is given):
ray_config.py     the --ray options, checked without Ray
pool.py           K workers over one executor (one job per replica), live progress of each
ray_executor.py   the Executor over a Ray Serve deployment: streaming calls, one retry on a lost replica
ray_replica.py    the VideoGenerator deployment: multiplexed bundles, one GPU and one job per replica
ray_cluster.py    a private `ray start --head` for the tests and the benchmark
"""
