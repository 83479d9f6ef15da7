"""Sans-IO protocol cores: bytes and a clock in, bytes or events out.

Nothing under this package imports gevent, socket, ssl or time: a test
drives each core with bytes and a fake clock (DESIGN.md §8).
"""
