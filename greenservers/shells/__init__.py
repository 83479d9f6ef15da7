"""The gevent shells: one per service, thin on purpose; sockets, greenlets, timeouts, logging and
sensors here, the protocol in greenservers.proto."""
