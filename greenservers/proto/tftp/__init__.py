from .transfers import *  # noqa: F403 -- the package's API, split by role in the next commit
from .transfers import _without_options  # noqa: F401
