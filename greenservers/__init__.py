"""greenservers: the network-ports core of an IP phone system in one gevent process."""

__version__ = "0.1.0"
