"""`chatbaker serve`: an OpenAI-compatible chat server with continuous batching (docs/serve.md).

batching.py      one forward for many sequences over a left-padded KV cache
engine.py        the scheduler thread: rows join and leave between steps, bounded queue
schemas.py       the OpenAI request bodies (pydantic)
app.py           the FastAPI routes, OpenAI's error schema, the input screening
moderation.py    the optional OpenAI /v1/moderations hook
request_log.py   the optional JSONL exchange log
cli.py           the verb
static/          the web chat page, served at / (its files under /static/)
"""
