"""The HTTP service: ``python -m autext_jax.serve`` scores texts over HTTP, one detector loaded at start-up.

``app.py`` owns the routes, request parsing and limits; ``batching.py`` the queue that gathers concurrent
requests into the packed engine; ``page.html`` the page at ``/``; ``__main__.py`` the command line and
graceful shutdown. Needs the ``serve`` extra (Starlette on uvicorn).
"""
