"""`chatbaker serve`: an OpenAI-compatible chat server with continuous batching (docs/serve.md).

batching.py      one forward for many sequences over a left-padded KV cache
engine.py        the scheduler thread: rows join and leave between steps, bounded queue
engine_process.py the engine in a process of its own, behind the engine's interface
schemas.py       the OpenAI request bodies (pydantic): strict types, unimplemented fields refused
errors.py        OpenAI's error body; validation errors as 400s naming the field
limits.py        the body size limit (413) and the prompt-length bound before tokenising
logprobs.py      log-probabilities for `logprobs` / `echo`, in OpenAI's shapes
app.py           wires the FastAPI app: lifespan, error handlers, body limit, the routers
server.py        the server's state (`Server` on app.state, a FastAPI dependency): keys, rate limits
routes/          the handlers by concern: openai.py (models, chat, completions), site.py (page, health)
screening.py     the input filters and the moderation hook in front of the model (and its replies)
generate.py      the built-in engine's side of a generation request: jobs, SSE, OpenAI's bodies
forwarding.py    the --upstream side: the request relayed, replies screened, the exchange logged
upstream.py      the HTTP client of the upstream engine, its failures as 502/503/504
moderation.py    the optional OpenAI /v1/moderations hook
request_log.py   the optional JSONL exchange log, one exchange's record
cli.py           the verb
static/          the web chat page, served at / (its files under /static/)
"""
