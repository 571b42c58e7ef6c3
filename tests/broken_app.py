"""An application module whose import fails inside the application's own code."""

import prefork_tcp_test_missing_dependency  # noqa: F401


def main(worker):  # pragma: no cover - never imported successfully
    pass
