"""``python -m devhost``: run ``function_app.py`` locally until Ctrl-C (see ``devhost.host``).

``--instances N`` (or ``WRITEBACK_DEV_INSTANCES``) runs N instances on one state folder, all serving ``--port``
(see ``devhost.supervisor``); ``WRITEBACK_DEV_INSTANCE_GROUPS`` pins trigger groups to them (see ``devhost.groups``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from devhost.groups import ALL_GROUPS, GROUPS_SETTING, INSTANCES_SETTING, parse_groups
from devhost.host import LocalRuntime
from devhost.launch import launch

DEFAULT_STATE_DIR = Path(os.environ.get("WRITEBACK_DEV_STATE_DIR", ".local")) / "runtime"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devhost", description=__doc__)
    parser.add_argument("--app-dir", type=Path, default=Path.cwd(), help="folder holding function_app.py and host.json")
    parser.add_argument("--module", default="function_app", help="the app module (default: function_app)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("WRITEBACK_DEV_PORT", "7071")))
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="where state is kept")
    parser.add_argument(
        "--local-services",
        type=Path,
        metavar="ENDPOINTS_JSON",
        help="point the app at the local services listed in this file (written by `make services`); "
        "variables already set in the environment win",
    )
    parser.add_argument("--log-level", default=os.environ.get("WRITEBACK_DEV_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--instances",
        type=int,
        default=int(os.environ.get(INSTANCES_SETTING) or 1),
        help=f"how many instances to run on the state folder (default: {INSTANCES_SETTING} or 1)",
    )
    parser.add_argument(
        "--instance-groups",
        default=os.environ.get(GROUPS_SETTING),
        help=f'trigger groups per instance, e.g. "http;durable,servicebus,timer" (default: {GROUPS_SETTING})',
    )
    # Set by the supervisor for each instance it starts: --port is then the instance's own port (0: any free one).
    parser.add_argument("--shared-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--instance-index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--groups", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    tag = f" i{args.instance_index}" if args.shared_port is not None else ""  # which instance wrote a log line
    logging.basicConfig(level=args.log_level, format=f"%(asctime)s{tag} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDKs log every HTTP request at INFO

    if args.local_services:
        from devhost.endpoints import apply_gateway_environment, read_endpoints

        apply_gateway_environment(read_endpoints(args.local_services))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    app_dir, state_dir = args.app_dir.resolve(), args.state_dir.resolve()
    if args.shared_port is not None:
        instance = LocalRuntime(
            app_dir=app_dir,
            state_dir=state_dir,
            port=args.port,
            module=args.module,
            groups=parse_groups(args.groups) if args.groups else ALL_GROUPS,
            shared_port=args.shared_port,
            instance_index=args.instance_index,
        )
        instance.start()
        return _serve_until(instance, stop)
    running = launch(
        app_dir=app_dir,
        state_dir=state_dir,
        port=args.port,
        module=args.module,
        instances=args.instances,
        groups=args.instance_groups,
        log_level=args.log_level,
    )
    if isinstance(running, LocalRuntime):
        return _serve_until(running, stop, f"local runtime ready on {running.base_url} (state in {args.state_dir})")
    count = len(running.instances)
    print(f"local runtime ready on {running.base_url}: {count} instances (state in {args.state_dir})", flush=True)
    try:
        return 0 if running.wait(stop) else 1
    finally:
        running.stop()


def _serve_until(runtime: LocalRuntime, stop: threading.Event, announce: str | None = None) -> int:
    """Keep a started runtime running until ``stop`` is set, then stop it."""
    if announce is not None:
        print(announce, flush=True)
    try:
        stop.wait()
    finally:
        runtime.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
