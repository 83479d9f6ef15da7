"""The process: the gunicorn master's hooks (launch), the one worker (worker), the sockets it
binds (binder) and the state it shares with the web application (runtime)."""
