"""``python -m devhost``: run ``function_app.py`` locally until Ctrl-C (see ``devhost.host``)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from devhost.host import LocalRuntime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devhost", description=__doc__)
    parser.add_argument("--app-dir", type=Path, default=Path.cwd(), help="folder holding function_app.py and host.json")
    parser.add_argument("--module", default="function_app", help="the app module (default: function_app)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("WRITEBACK_DEV_PORT", "7071")))
    parser.add_argument("--state-dir", type=Path, default=Path(".local/runtime"), help="where state is kept")
    parser.add_argument(
        "--local-services",
        type=Path,
        metavar="ENDPOINTS_JSON",
        help="point the app at the local services listed in this file (written by `make services`)",
    )
    parser.add_argument("--log-level", default=os.environ.get("WRITEBACK_DEV_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDKs log every HTTP request at INFO

    if args.local_services:
        from devhost.endpoints import gateway_environment, read_endpoints

        os.environ.update(gateway_environment(read_endpoints(args.local_services)))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    runtime = LocalRuntime(
        app_dir=args.app_dir.resolve(), state_dir=args.state_dir.resolve(), port=args.port, module=args.module
    )
    runtime.start()
    print(f"local runtime ready on {runtime.base_url} (state in {args.state_dir})", flush=True)
    try:
        stop.wait()
    finally:
        runtime.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
