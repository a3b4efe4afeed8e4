"""Command line: parses arguments and picks the mode. Nothing else lives here.

valve-console                      backend + API + TUI in one loop (the TUI uses the unix socket)
valve-console --backend-only       backend + API, headless (never imports Textual)
valve-console --attach URL         the TUI alone, as a client of a running backend
valve-console demo                 a Vivian virtual farm (vPDU + simulated DUTs) with the console
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import signal
import sys
from pathlib import Path
from typing import Any

EXIT_START_FAILURE = 2


def _settings(args: argparse.Namespace, **overrides: Any):
    from .config import Settings

    values: dict[str, Any] = {}
    for key in ("data_dir", "listen", "netconsole", "farm_name"):
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    if getattr(args, "serial", None):
        values["serial"] = list(args.serial)
    values.update(overrides)
    return Settings(**values)


def _setup_logging(settings, to_stderr: bool) -> None:
    root = logging.getLogger()
    root.setLevel(getattr(logging, str(settings.log_level).upper(), logging.INFO))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if to_stderr:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(
            settings.data_dir / "valve-console.log", maxBytes=8 * 1024 * 1024, backupCount=3
        )
        fh.setFormatter(fmt)
        root.addHandler(fh)
    except OSError:
        pass  # reported by Farm.start with a clear message
    for noisy in ("uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _catch_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal or ssh went away
        loop.add_signal_handler(sig, stop.set)


async def _run_until_signal(stop: asyncio.Event) -> None:
    _catch_signals(stop)
    await stop.wait()


async def _backend_main(settings) -> int:
    from .backend.farm import Farm, FarmStartError

    farm = Farm(settings)
    stop = asyncio.Event()
    _catch_signals(stop)  # before the API answers: a signal right after start-up must stop us cleanly
    try:
        await farm.start()
    except FarmStartError as exc:
        print(f"valve-console: {exc}", file=sys.stderr)
        await farm.stop()
        return EXIT_START_FAILURE
    host, port = farm.api_address
    print(f"valve-console backend: API http://{host}:{port}  token {settings.token_path}", flush=True)
    try:
        await _run_until_signal(stop)
    finally:
        await farm.stop()
    return 0


async def _demo_main(args: argparse.Namespace) -> int:
    import tempfile

    from .backend.farm import Farm, FarmStartError

    temp = None
    if args.data_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="valve-console-demo-")
        args.data_dir = Path(temp.name)
    settings = _settings(
        args,
        listen=args.listen or "127.0.0.1:0",
        netconsole=args.netconsole or "127.0.0.1:0",
        farm_name=args.farm_name or "vivian",
    )
    _setup_logging(settings, to_stderr=False)
    from vivian.vpdu import VirtualPDU

    farm = Farm(settings)
    vpdu = None
    try:
        await farm.start()
        api = "http://{}:{}".format(*farm.api_address)
        console = "{}:{}".format(*farm.netconsole_address)
        vpdu = VirtualPDU(num_ports=args.duts, api=api, console=console, log_dir=settings.data_dir / "vivian")
        try:
            vport = await vpdu.start("127.0.0.1", args.vpdu_port)
        except OSError as exc:
            raise FarmStartError(f"cannot start the vPDU on port {args.vpdu_port}: {exc.strerror or exc}") from None
        await farm.power.add_pdu("vpdu1", "vpdu", {"hostname": f"127.0.0.1:{vport}"})
    except FarmStartError as exc:
        print(f"valve-console: {exc}", file=sys.stderr)
        if vpdu is not None:
            await vpdu.stop()
        await farm.stop()
        return EXIT_START_FAILURE
    try:
        if args.headless:
            print(f"valve-console demo: API {api}  token {settings.token_path}", flush=True)
            print(f"  vPDU vpdu1 on 127.0.0.1:{vport} with {args.duts} outlets, all OFF", flush=True)
            print(f"  power a DUT on:  python vivian/client.py --port {vport} --outlet 3 --on", flush=True)
            await _run_until_signal(asyncio.Event())
        else:
            from .app import run_tui

            await run_tui(api_url=None, socket_path=settings.socket_path, token=farm.token, farm=farm)
    finally:
        await vpdu.stop()
        await farm.stop()
        if temp is not None:
            temp.cleanup()
    return 0


async def _all_in_one(settings) -> int:
    from .backend.farm import Farm, FarmStartError

    farm = Farm(settings)
    try:
        await farm.start()
    except FarmStartError as exc:
        print(f"valve-console: {exc}", file=sys.stderr)
        await farm.stop()
        return EXIT_START_FAILURE
    try:
        from .app import run_tui

        await run_tui(api_url=None, socket_path=settings.socket_path, token=farm.token, farm=farm)
    finally:
        await farm.stop()
    return 0


def _job_main(args: argparse.Namespace) -> int:
    from .client import JOB_EXIT, run_job_file

    if args.job_command != "run":
        print("valve-console job: use 'valve-console job run JOB.yml'", file=sys.stderr)
        return JOB_EXIT["SETUP_FAIL"]
    url = args.api or os.environ.get("VALVE_CONSOLE_API") or "http://127.0.0.1:8000"
    token = args.job_token or args.token or os.environ.get("VALVE_CONSOLE_TOKEN")
    data_dir = args.job_data_dir or args.data_dir
    if token is None and data_dir is not None:
        try:
            token = (Path(data_dir) / "token").read_text().strip()
        except OSError as exc:
            print(f"valve-console: cannot read the token in {data_dir}: {exc.strerror or exc}", file=sys.stderr)
            return JOB_EXIT["SETUP_FAIL"]
    return asyncio.run(run_job_file(url, token, args.job_file, args.tags, args.machine_id, args.job_id))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="valve-console", description="Bare-metal CI gateway console and backend.")
    parser.add_argument("--backend-only", action="store_true", help="run the backend and API headless")
    parser.add_argument("--attach", metavar="URL", help="run the TUI against a running backend")
    parser.add_argument("--token", help="operator token for --attach (or env VALVE_CONSOLE_TOKEN)")
    parser.add_argument("--data-dir", type=Path, help="data directory (database, token, console logs)")
    parser.add_argument("--listen", help="API address HOST:PORT (default 127.0.0.1:8000)")
    parser.add_argument("--netconsole", help="netconsole address HOST:PORT (default 0.0.0.0:8100)")
    parser.add_argument("--farm-name", help="farm name, the prefix of machine names")
    parser.add_argument(
        "--serial",
        action="append",
        metavar="PATH[@BAUD]",
        help="a serial console device to read (repeatable; default baud 115200), e.g. /dev/ttyUSB0@115200",
    )
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="a Vivian virtual farm with the console")
    demo.add_argument("--duts", type=int, default=16, help="outlets on the virtual PDU (default 16)")
    demo.add_argument("--data-dir", type=Path, help="keep the demo's data here (default: a temporary directory)")
    demo.add_argument("--vpdu-port", type=int, default=9191)
    demo.add_argument("--listen", help="API address (default 127.0.0.1, any free port)")
    demo.add_argument("--netconsole", help="netconsole address (default 127.0.0.1, any free port)")
    demo.add_argument("--farm-name", help="farm name (default vivian)")
    demo.add_argument("--headless", action="store_true", help="no TUI: print where the API is and wait")
    job = sub.add_parser("job", help="job client: submit a job and follow it")
    job_sub = job.add_subparsers(dest="job_command")
    run = job_sub.add_parser(
        "run",
        help="submit JOB.yml, stream its console, exit with the job status",
        description="Exit codes: PASS 0, WARN 1, COMPLETE 2, FAIL 3, INCOMPLETE 4, UNKNOWN 5, SETUP_FAIL 6. "
        "On a tty, keys go to the DUT; Ctrl-A Ctrl-C cancels the job, Ctrl-A Ctrl-A sends Ctrl-A.",
    )
    run.add_argument("job_file", metavar="JOB.yml", help="the job description (- for stdin)")
    run.add_argument("-t", "--machine-tag", dest="tags", action="append", default=[], help="required tag (repeatable)")
    run.add_argument("-i", "--machine-id", dest="machine_id", metavar="MAC", help="run on this machine")
    run.add_argument("-j", "--job-id", dest="job_id", help="the job's id (default: generated)")
    run.add_argument("-w", "--wait", action="store_true", help="wait for a machine (always done: jobs are queued)")
    run.add_argument("-e", "--api", "--executor", dest="api", help="the API URL (or env VALVE_CONSOLE_API)")
    run.add_argument("--token", dest="job_token", help="operator token (or env VALVE_CONSOLE_TOKEN)")
    run.add_argument("--data-dir", dest="job_data_dir", type=Path, help="read the token from <DIR>/token")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "job":
            return _job_main(args)
        if args.command == "demo":
            if not 1 <= args.duts <= 255:
                print("valve-console: --duts must be between 1 and 255", file=sys.stderr)
                return EXIT_START_FAILURE
            return asyncio.run(_demo_main(args))
        if args.attach:
            from .app import attach_main

            token = args.token or os.environ.get("VALVE_CONSOLE_TOKEN")
            if token is None and args.data_dir is not None and (args.data_dir / "token").exists():
                token = (args.data_dir / "token").read_text().strip()
            return asyncio.run(attach_main(args.attach, token))
        try:
            settings = _settings(args)
        except Exception as exc:  # noqa: BLE001 - pydantic's report, in one line
            print(f"valve-console: invalid setting: {exc}", file=sys.stderr)
            return EXIT_START_FAILURE
        if args.backend_only:
            _setup_logging(settings, to_stderr=True)
            return asyncio.run(_backend_main(settings))
        _setup_logging(settings, to_stderr=False)
        return asyncio.run(_all_in_one(settings))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
