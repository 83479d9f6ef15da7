"""Sans-IO protocol cores: bytes and a clock in, bytes or events out (proto.results).

Nothing under this package imports gevent, socket, select or ssl, or reads a
clock or sleeps: the shells (greenservers.shells) pass the time in, and a test
drives each core with bytes and a fake clock (tests/core/; tests/core/test_sans_io.py
imports every module here with those made unimportable).
"""
