"""gunicorn settings of greenservers: thin on purpose.

The master binds nothing; the one worker (greenservers.process.worker.GreenWorker)
binds every service's sockets from the greenservers settings file
(GREENSERVERS_CONFIG, else ./greenservers.toml) and serves them all.
"""

from greenservers.process import launch

bind = []
workers = 1
worker_class = "greenservers.process.worker.GreenWorker"
proc_name = "greenservers"
control_socket_disable = True
graceful_timeout = 10
timeout = 30
errorlog = "-"
loglevel = "info"
on_starting = launch.on_starting
