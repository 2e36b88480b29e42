"""The SDK worker process of a local multi-process run (``runner.num_workers > 1``):
Beam's own harness, with two changes that keep an interrupted run quiet.

- Ctrl-C is ignored here: the terminal sends it to the whole process group, and the tamis
  process stops its workers itself (one ``tamis: interrupted`` line, exit 130).
- Beam's own log lines stay quiet unless tamis runs with ``-v`` (``TAMIS_VERBOSE``): a
  failing bundle's traceback would otherwise be printed by every worker, while the error
  itself reaches the tamis process, which reports it in one line.
- The process leaves with ``os._exit`` once the harness returns: when the runner goes away
  mid-bundle, interpreter teardown would destroy gRPC threads that are still joinable and
  abort ("terminate called without an active exception", exit 134).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

VERBOSE = "TAMIS_VERBOSE"  # set by `tamis -v`: workers log as Beam does


def _print_except_tracebacks(*args, file=None, **kwargs) -> None:
    if file is sys.stderr and args and str(args[0]).startswith("Traceback"):
        return
    print(*args, file=file, **kwargs)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = 0
    try:
        from apache_beam.runners.worker import sdk_worker, sdk_worker_main

        if not os.environ.get(VERBOSE):
            logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
            # The harness also prints a failing instruction's traceback to stderr itself;
            # the same text goes to the runner in the instruction's response.
            sdk_worker.print = _print_except_tracebacks

        sdk_worker_main.main(sys.argv)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:  # noqa: BLE001 (reported by the harness's log handler already)
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
