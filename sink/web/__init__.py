"""The web page: ``compose`` (``build_ui``: its parts made and wired), ``server`` (the aiohttp
app: serving, the handlers, the routes), ``live`` (the NATS feed and each page's top N),
``queries`` (parameters, the map and the history series), ``access`` (Host/Origin checks
and the token); static files in ``static/``. See docs/http-and-web.md, ``## Web page``."""
