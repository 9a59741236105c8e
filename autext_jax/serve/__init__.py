"""The HTTP service: ``python -m autext_jax.serve`` scores texts over HTTP, one detector loaded at start-up.

``app.py`` owns the routes; ``schemas.py`` the request/response models (they validate and make
``/openapi.json``); ``reading.py`` the body cap, deadline and strict JSON; ``batching.py`` the queue that
gathers concurrent requests into the packed engine; ``protocol.py`` the deadline for request headers;
``page.html`` the page at ``/``; ``__main__.py`` the command line and graceful shutdown. Needs the
``serve`` extra (FastAPI on uvicorn).
"""
