"""The Flask application: create_app() and the `app` that gunicorn serves."""

from greenservers.web import create_app

app = create_app()
