"""`twinformer serve`: an OpenAI-compatible server over either stack (book chapter 6).

protocol.py        the contract between the HTTP layer and the engines (what a request is, how tokens come back)
limits.py          what one request may ask of the loaded model (every engine's submit check)
serial.py          the serial engine: one request at a time through the stack's generation loop (--no-batching)
batching.py        the batching engine: continuous batching on the KV cache, many adapters over one base
engines.py         make_engine: picks one of the two
app.py             the FastAPI app: OpenAI endpoints, SSE streaming, /v1/models, /health, /metrics, the page
choices.py         one API request's choices in flight: engine tokens -> text deltas, stop strings
openai_schemas.py  the OpenAI request fields read, and their limits
request_body.py    the body read under a size limit as UTF-8 JSON
errors.py          OpenAI-style error bodies
metrics.py         the Prometheus metrics
model_text.py      text <-> ids for the served checkpoint (as generate / summarize / translate read it)
chat_template.py   chat messages -> prompt: the checkpoint's jinja2 template as transformers renders it, or the book's format
chat_page.html     the chat page at /
"""
