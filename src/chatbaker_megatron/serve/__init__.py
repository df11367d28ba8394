"""`chatbaker serve`: an OpenAI-compatible chat server with continuous batching (docs/serve.md).

batching.py      one forward for many sequences over a left-padded KV cache
engine.py        the scheduler thread: rows join and leave between steps, bounded queue
schemas.py       the OpenAI request bodies (pydantic): strict types, unimplemented fields refused
errors.py        OpenAI's error body; validation errors as 400s naming the field
limits.py        the body size limit (413) and the prompt-length bound before tokenising
logprobs.py      log-probabilities for `logprobs` / `echo`, in OpenAI's shapes
app.py           the FastAPI routes, the input screening, the request log
moderation.py    the optional OpenAI /v1/moderations hook
request_log.py   the optional JSONL exchange log
cli.py           the verb
static/          the web chat page, served at / (its files under /static/)
"""
