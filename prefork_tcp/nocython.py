"""What the plain modules see as ``cython`` where Cython is not installed: ``compiled`` is
False, so they take their plain Python branches (``sysio.py``, ``api.py``)."""

compiled = False
