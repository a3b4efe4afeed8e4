"""Command line: parses arguments and picks the mode. Nothing else lives here.

valve-console                      backend + API + TUI in one loop (the TUI uses the unix socket)
valve-console --backend-only       backend + API, headless (never imports Textual)
valve-console --attach URL         the TUI alone, as a client of a running backend
valve-console --attach URL --attach URL2 ...   the fleet console on those backends (no fleet file)
valve-console fleet FILE           the fleet console: one row per gateway of the fleet file (TOML)
valve-console demo                 a Vivian virtual farm (vPDU + simulated DUTs) with the console
valve-console doctor               checks this gateway against what the seed requires (doctor.py)
valve-console serve                the TUI in a browser (textual-serve behind a login), see serve.py
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import errno
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
    given = set(values)
    values.update(overrides)
    settings = Settings(**values)
    settings.mark_given(given, "command line")  # the Settings view says where each setting came from
    return settings


def _start_failure(exc: Exception) -> str:
    """One line for the operator: a FarmStartError's words, or an OS error met while starting."""
    if isinstance(exc, OSError):
        text = f"cannot start: {exc.strerror or exc}"
        if exc.errno in (errno.EMFILE, errno.ENFILE) and "open-file limit" not in text:
            text += " (raise the open-file limit: LimitNOFILE=65536 in the unit, or ulimit -n)"
    else:
        text = str(exc)
    return " ".join(text.split())


def _run_farm(main: Any) -> int:
    """``asyncio.run(main)`` for the modes that start a farm: an OS error before the farm could report it
    (no descriptor left even to import a module) is one line and exit 2 too."""
    try:
        return asyncio.run(main)
    except OSError as exc:
        print(f"valve-console: {_start_failure(exc)}", file=sys.stderr)
        return EXIT_START_FAILURE


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


def sd_notify(state: str) -> bool:
    """Tell systemd (Type=notify) about our state, e.g. ``READY=1``: one datagram to $NOTIFY_SOCKET
    (a path, or an abstract name starting with @). No socket set or a send error: False, nothing else."""
    import socket

    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        logging.getLogger("valve_console").warning("sd_notify %s to %s failed: %s", state, address, exc)
        return False
    return True


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
    except (FarmStartError, OSError) as exc:  # OSError: out of file descriptors, say (never a traceback)
        print(f"valve-console: {_start_failure(exc)}", file=sys.stderr)
        await farm.stop()
        return EXIT_START_FAILURE
    host, port = farm.api_address
    print(f"valve-console backend: API http://{host}:{port}  token {settings.token_path}", flush=True)
    sd_notify(f"READY=1\nSTATUS=API http://{host}:{port}")
    try:
        await _run_until_signal(stop)
    finally:
        sd_notify("STOPPING=1")
        await farm.stop()
    return 0


def _demo_reopen_note(farm, data_dir: Path) -> str | None:
    """What an earlier demo left in ``data_dir`` (None: a new farm), in words."""
    machines, pdus = len(farm.machines.machines), len(farm.power.pdus)
    history = sum(1 for job in farm.jobs.jobs.values() if job.done.is_set())
    if not (machines or pdus or history):
        return None
    return (f"reopened the farm in {data_dir}: {pdus} PDU(s), {machines} machine(s), "
            f"{history} job(s) in the history")


DEMO_GITLAB = "vivian"  # the demo's GitLab instance (Vivian's stand-in, vivian/gitlab.py)


async def _demo_gitlab(farm):
    """Start Vivian's GitLab stand-in (127.0.0.1, a free port, a new admin token) in a thread and make it the
    farm's GitLab instance through the farm's own service: ready machines get their runners there. A reopened
    demo's instance gets the new URL and token (its runners on the old stand-in are forgotten)."""
    import secrets

    from vivian.gitlab import VivianGitlab, write_demo_file

    from .backend.errors import BadRequest, Conflict
    from .backend.farm import FarmStartError
    from .backend.gitlab import GitlabInstanceCreate, GitlabInstanceUpdate

    gitlab = VivianGitlab("127.0.0.1", 0, admin_token="glpat-vivian-" + secrets.token_hex(10))
    await asyncio.to_thread(gitlab.start)
    try:
        if DEMO_GITLAB in farm.gitlab.instances:
            update = GitlabInstanceUpdate(url=gitlab.url, token=gitlab.admin_token)
            await farm.gitlab.update_instance(DEMO_GITLAB, update)
        else:
            await farm.gitlab.add_instance(GitlabInstanceCreate(
                name=DEMO_GITLAB, url=gitlab.url, token=gitlab.admin_token, farm_tags=["farm:vivian"]))
    except (BadRequest, Conflict) as exc:
        await asyncio.to_thread(gitlab.stop)
        raise FarmStartError(f"cannot make Vivian's GitLab the farm's instance {DEMO_GITLAB!r}: {exc}") from None
    # `python vivian/gitlab.py --list --data-dir DIR` reads which stand-in this is (the token: mode 0600)
    await asyncio.to_thread(write_demo_file, farm.settings.data_dir, gitlab.url, gitlab.admin_token)
    return gitlab


class DemoFarm:
    """One Vivian farm of the demo: the Farm, its vPDU (``vpdu1``) and, unless --no-gitlab, its GitLab stand-in."""

    def __init__(self, farm) -> None:
        self.farm = farm
        self.vpdu = None
        self.vport = 0
        self.gitlab = None
        self.reopened: str | None = None

    @property
    def api(self) -> str:
        return "http://{}:{}".format(*self.farm.api_address)

    async def start(self, args: argparse.Namespace, vpdu_port: int) -> None:
        """Start the farm, its vPDU and GitLab; FarmStartError or OSError in words (the caller stops it)."""
        from vivian.vpdu import VirtualPDU

        from .backend.farm import FarmStartError

        farm, settings = self.farm, self.farm.settings
        await farm.start()
        console = "{}:{}".format(*farm.netconsole_address)
        self.vpdu = VirtualPDU(num_ports=args.duts, api=self.api, console=console,
                               log_dir=settings.data_dir / "vivian")
        try:
            self.vport = await self.vpdu.start("127.0.0.1", vpdu_port)
        except OSError as exc:
            raise FarmStartError(f"cannot start the vPDU on port {vpdu_port}: {exc.strerror or exc}") from None
        self.reopened = _demo_reopen_note(farm, settings.data_dir)
        config = {"hostname": f"127.0.0.1:{self.vport}"}
        existing = farm.power.pdus.get("vpdu1")
        if existing is None:
            await farm.power.add_pdu("vpdu1", "vpdu", config)
        elif existing.driver_name != "vpdu":
            raise FarmStartError(
                f"the farm in {settings.data_dir} has a PDU vpdu1 with the driver {existing.driver_name}, not the "
                "demo's vPDU: rename or remove it, or use another --data-dir"
            )
        else:  # the farm of an earlier demo: its vPDU listens on a new port now
            await farm.power.reconfigure_pdu("vpdu1", config)
        if self.reopened:
            logging.getLogger("valve_console.demo").info("%s", self.reopened)
        if not args.no_gitlab:
            self.gitlab = await _demo_gitlab(farm)
        elif DEMO_GITLAB in farm.gitlab.instances:  # a reopened demo's stand-in is gone: so is its instance
            await farm.gitlab.remove_instance(DEMO_GITLAB)

    def describe(self, args: argparse.Namespace, prefix: str = "valve-console demo:") -> None:
        """What --headless prints: where the API, the vPDU and GitLab are."""
        if self.reopened:
            print(f"{prefix} {self.reopened}", flush=True)
        print(f"{prefix} API {self.api}  token {self.farm.settings.token_path}", flush=True)
        print(f"  vPDU vpdu1 on 127.0.0.1:{self.vport} with {args.duts} outlets, all OFF", flush=True)
        print(f"  power a DUT on:  python vivian/client.py --port {self.vport} --outlet 3 --on", flush=True)
        if self.gitlab is not None:
            print(f"  GitLab {DEMO_GITLAB} (Vivian stand-in) on {self.gitlab.url}  admin token "
                  f"{self.gitlab.admin_token}", flush=True)
            print(f"  its runners:     python vivian/gitlab.py --list --url {self.gitlab.url} "
                  f"--token {self.gitlab.admin_token}", flush=True)

    async def stop(self) -> None:
        if self.vpdu is not None:
            await self.vpdu.stop()
        await self.farm.stop()
        if self.gitlab is not None:  # after the farm: its last calls to GitLab have ended
            await asyncio.to_thread(self.gitlab.stop)  # shutdown() waits for the server thread: not on the loop


def _demo_settings(args: argparse.Namespace, **overrides: Any):
    return _settings(
        args,
        # Sgt. Hartman with 3 boot loops (all needed) so the demo shows a training; the environment wins
        **{k: v for k, v in (("training_loops", 3), ("training_qualify", 3))
           if f"VALVE_CONSOLE_{k.upper()}" not in os.environ},
        **overrides,
    )


async def _demo_main(args: argparse.Namespace) -> int:
    """``demo``: one Vivian farm (or ``--farms N``: N of them and the fleet console over them)."""
    import tempfile

    from .backend.farm import Farm, FarmStartError

    temp = None
    if args.data_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="valve-console-demo-")
        args.data_dir = Path(temp.name)
    base = args.data_dir
    if args.farms == 1:
        all_settings = [_demo_settings(args, listen=args.listen or "127.0.0.1:0",
                                       netconsole=args.netconsole or "127.0.0.1:0",
                                       farm_name=args.farm_name or "vivian")]
    else:  # each farm its own data dir, API, netconsole and vPDU
        prefix = args.farm_name or "vivian"
        all_settings = [_demo_settings(args, data_dir=base / f"{prefix}-{i}", listen="127.0.0.1:0",
                                       netconsole="127.0.0.1:0", farm_name=f"{prefix}-{i}")
                        for i in range(1, args.farms + 1)]
    _setup_logging(all_settings[0] if args.farms == 1 else _demo_settings(args, data_dir=base), to_stderr=False)
    demos = [DemoFarm(Farm(settings)) for settings in all_settings]
    started: list[DemoFarm] = []
    try:
        try:
            for i, demo in enumerate(demos):
                started.append(demo)
                await demo.start(args, args.vpdu_port + i if args.vpdu_port else 0)
        except (FarmStartError, OSError) as exc:
            which = f"farm {demo.farm.settings.farm_name}: " if args.farms > 1 else ""
            print(f"valve-console: {which}{_start_failure(exc)}", file=sys.stderr)
            return EXIT_START_FAILURE
        if args.headless:
            for demo in demos:
                demo.describe(args, "valve-console demo:" if args.farms == 1
                              else f"valve-console demo {demo.farm.settings.farm_name}:")
            await _run_until_signal(asyncio.Event())
        elif args.farms == 1:
            from .app import run_tui

            farm = demos[0].farm
            await run_tui(api_url=None, socket_path=farm.settings.socket_path, token=farm.token, farm=farm)
        else:
            from .app import fleet_main
            from .console_data.fleet import FleetSpec, GatewaySpec

            spec = FleetSpec(args.farm_name or "vivian",
                             tuple(GatewaySpec(d.farm.settings.farm_name, d.api, d.farm.token) for d in demos))
            await fleet_main(spec)
    finally:
        for demo in reversed(started):
            await demo.stop()
        if temp is not None:
            temp.cleanup()
    return 0


async def _all_in_one(settings) -> int:
    from .backend.farm import Farm, FarmStartError

    farm = Farm(settings)
    try:
        await farm.start()
    except (FarmStartError, OSError) as exc:
        print(f"valve-console: {_start_failure(exc)}", file=sys.stderr)
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
    url = args.api or os.environ.get("VALVE_CONSOLE_API") or os.environ.get("VALVE_CONSOLE_URL") or "http://127.0.0.1:8000"
    if args.machine_id is None and os.environ.get("VALVE_CONSOLE_MACHINE"):
        args.machine_id = os.environ["VALVE_CONSOLE_MACHINE"]  # set by the GitLab custom executor
    token = args.job_token or (args.token[0] if args.token else None) or os.environ.get("VALVE_CONSOLE_TOKEN")
    data_dir = args.job_data_dir or args.data_dir
    if token is None and data_dir is not None:
        try:
            token = (Path(data_dir) / "token").read_text().strip()
        except OSError as exc:
            print(f"valve-console: cannot read the token in {data_dir}: {exc.strerror or exc}", file=sys.stderr)
            return JOB_EXIT["SETUP_FAIL"]
    return asyncio.run(
        run_job_file(url, token, args.job_file, args.tags, args.machine_id, args.job_id, args.share_dir)
    )


def _serve_main(args: argparse.Namespace) -> int:
    from .config import parse_hostport
    from .serve import (GuardedServer, ServeError, attach_command, fleet_command, read_new_password, run,
                        store_password)

    data_dir = args.serve_data_dir or args.data_dir
    try:
        if data_dir is None:
            data_dir = _settings(args).data_dir
        if args.set_password:
            path = store_password(data_dir, read_new_password())
            print(f"valve-console serve: password stored in {path}", file=sys.stderr)
            return 0
        host, port = parse_hostport(args.serve_listen)
        if args.serve_host is not None or args.serve_port is not None:  # --host/--port override its parts
            wanted = port if args.serve_port is None else args.serve_port
            host, port = parse_hostport(f"{args.serve_host or host}:{wanted}")
        if args.max_sessions < 1:
            raise ServeError("--max-sessions must be at least 1")
        token = args.serve_token or (args.token[0] if args.token else None) or os.environ.get("VALVE_CONSOLE_TOKEN")
        if token:
            os.environ["VALVE_CONSOLE_TOKEN"] = token  # each tab's --attach reads it from there
        if args.serve_fleet is not None:
            from .console_data.fleet import FleetError, read_fleet_file

            try:
                read_fleet_file(args.serve_fleet)  # checked now: a bad file is said once, not in every tab
            except FleetError as exc:
                raise ServeError(str(exc)) from None
            command = fleet_command(args.serve_fleet)
        else:
            api = args.api or os.environ.get("VALVE_CONSOLE_API") or "http://127.0.0.1:8000"
            command = attach_command(api, data_dir)
        server = GuardedServer(
            command,
            data_dir=data_dir,
            host=host,
            port=port,
            token=token,
            public_url=args.public_url,
            allowed_hosts=args.allow_host,
            max_sessions=args.max_sessions,
        )
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return asyncio.run(run(server, notify=sd_notify))
    except (ServeError, ValueError) as exc:
        print(f"valve-console serve: {exc}", file=sys.stderr)
        return EXIT_START_FAILURE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="valve-console", description="Bare-metal CI gateway console and backend.")
    parser.add_argument("--backend-only", action="store_true", help="run the backend and API headless")
    parser.add_argument("--attach", metavar="URL", action="append",
                        help="run the TUI against a running backend; several times: a fleet of them")
    parser.add_argument("--token", action="append",
                        help="operator token for --attach (or env VALVE_CONSOLE_TOKEN); with several --attach: "
                        "once for all, or once per --attach in the same order")
    parser.add_argument("--data-dir", type=Path, help="data directory (database, token, console logs)")
    parser.add_argument("--listen", help="API address HOST:PORT (default 127.0.0.1:8000)")
    parser.add_argument("--netconsole", help="netconsole address HOST:PORT (default: the private address "
                        "VALVE_CONSOLE_PRIVATE_IP port 8100, or 127.0.0.1:8100 without it)")
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
    demo.add_argument("--farms", type=int, default=1, metavar="N",
                      help="N farms (vivian-1..N), each its own backend, vPDU, DUTs and data dir "
                      "(<data-dir>/vivian-i), and the fleet console over them")
    demo.add_argument("--no-gitlab", action="store_true",
                      help="no GitLab (default: Vivian's GitLab stand-in, where ready DUTs get their runners)")
    fleet = sub.add_parser(
        "fleet", help="the console on a fleet of gateways (a fleet file)",
        description="Reads FILE (TOML): an optional name = \"...\" and one [[gateway]] table per gateway with "
        "url = \"http://host:8000\", an optional name (default host:port) and token = \"...\" or "
        "token_file = \"path\" (relative to FILE). Opens the Fleet screen: one live row per gateway; enter "
        "shows a gateway's screens, 0 comes back.",
    )
    fleet.add_argument("fleet_file", metavar="FILE", type=Path, help="the fleet file (TOML)")
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
    run.add_argument(
        "-i", "--machine-id", dest="machine_id", metavar="MAC", help="run on this machine (env VALVE_CONSOLE_MACHINE)"
    )
    run.add_argument("-j", "--job-id", dest="job_id", help="the job's id (default: generated)")
    run.add_argument(
        "-s",
        "--share-directory",
        dest="share_dir",
        metavar="SHARE_DIR",
        help="send this directory (created if missing) with the job; the job's share comes back into it at the end",
    )
    run.add_argument("-w", "--wait", action="store_true", help="wait for a machine (always done: jobs are queued)")
    run.add_argument("-e", "--api", "--executor", dest="api", help="the API URL (or env VALVE_CONSOLE_API)")
    run.add_argument("--token", dest="job_token", help="operator token (or env VALVE_CONSOLE_TOKEN)")
    run.add_argument("--data-dir", dest="job_data_dir", type=Path, help="read the token from <DIR>/token")
    from .gitlab_executor import add_parser as add_gitlab_executor

    add_gitlab_executor(sub)
    serve = sub.add_parser(
        "serve",
        help="the console in a browser (textual-serve behind a login)",
        description="Each browser tab runs 'valve-console --attach API'. Log in with the password set by "
        "--set-password (its scrypt hash is kept in <data>/web-password) or the operator token.",
    )
    serve.add_argument("--api", help="the backend API URL (or env VALVE_CONSOLE_API; default http://127.0.0.1:8000)")
    serve.add_argument("--fleet", dest="serve_fleet", metavar="FILE", type=Path,
                       help="each tab runs the fleet console on this fleet file instead of --attach API")
    serve.add_argument(
        "--listen", dest="serve_listen", metavar="HOST:PORT", default="127.0.0.1:8080",
        help="where to serve (default 127.0.0.1:8080)",
    )
    serve.add_argument("--host", dest="serve_host", help="the address part of --listen (DESIGN.md's form)")
    serve.add_argument("--port", dest="serve_port", help="the port part of --listen (DESIGN.md's form)")
    serve.add_argument(
        "--data-dir", dest="serve_data_dir", metavar="DIR", type=Path, help="data directory (token, web-password)"
    )
    serve.add_argument(
        "--token", dest="serve_token", metavar="TOKEN", help="operator token (default: read <data>/token)"
    )
    serve.add_argument("--public-url", help="the URL browsers use, when behind a proxy (e.g. https://gw.lab)")
    serve.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME", help="another host name browsers may use"
    )
    serve.add_argument("--max-sessions", type=int, metavar="N", default=8, help="consoles open at once (default 8)")
    serve.add_argument(
        "--set-password", action="store_true", help="read a new password from the terminal or stdin, store its hash"
    )
    doctor = sub.add_parser(
        "doctor",
        help="check this gateway against what the seed requires",
        description="Checks two NICs (public with the default route, private for the DUTs), the volumes "
        "/mnt/permanent and /mnt/tmp, privileges (dnsmasq, serial devices), tools (dnsmasq, iPXE files, "
        "gitlab-runner, ser2net), the API and netconsole ports, and the database. One line per check: "
        "ok, WARN or FAIL with how to fix it. Exit status 1 if any check FAILs.",
    )
    doctor.add_argument("--data-dir", dest="doctor_data_dir", type=Path, help="the data directory to check")
    doctor.add_argument("--listen", dest="doctor_listen", help="the API address to check (default: the setting)")
    doctor.add_argument("--netconsole", dest="doctor_netconsole", help="the netconsole address to check")
    return parser


def _doctor_main(args: argparse.Namespace) -> int:
    from .doctor import main as doctor_main

    overrides = {
        key: value
        for key, value in (
            ("data_dir", args.doctor_data_dir),
            ("listen", args.doctor_listen),
            ("netconsole", args.doctor_netconsole),
        )
        if value is not None
    }
    try:
        settings = _settings(args, **overrides)
    except Exception as exc:  # noqa: BLE001 - pydantic's report, in one line
        print(f"valve-console doctor: invalid setting: {exc}", file=sys.stderr)
        return EXIT_START_FAILURE
    return doctor_main(settings)


def _no_terminal() -> str | None:
    """Why the console cannot start here, or None. Without a terminal (``ssh host`` with no tty, a
    pipe) it would draw into the pipe and wait for keys for ever: one stuck process per such login."""
    if os.environ.get("TEXTUAL_DRIVER"):  # textual-serve's web driver (or another) brings its own screen
        return None
    screen = sys.__stderr__  # where Textual draws
    if sys.stdin is not None and sys.stdin.isatty() and screen is not None and screen.isatty():
        return None
    return "the console needs a terminal (over ssh: ssh -t; without a console: --backend-only)"


def _fleet_spec(args: argparse.Namespace):
    """The fleet asked for (a fleet file, or --attach given several times), None for no fleet; FleetError
    in words for a bad one."""
    from .console_data.fleet import fleet_of_urls, read_fleet_file

    if args.command == "fleet":
        return read_fleet_file(args.fleet_file)
    if args.command is None and args.attach and len(args.attach) > 1:
        tokens = list(args.token or [])
        if not tokens and os.environ.get("VALVE_CONSOLE_TOKEN"):
            tokens = [os.environ["VALVE_CONSOLE_TOKEN"]]
        return fleet_of_urls(args.attach, tokens)
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo" and not 1 <= args.farms <= 50:
        print("valve-console: --farms must be between 1 and 50", file=sys.stderr)
        return EXIT_START_FAILURE
    if args.command == "demo" and args.farms > 1 and (args.listen or args.netconsole):
        print("valve-console: --listen and --netconsole name one farm's addresses: with --farms, each farm "
              "takes free loopback ports", file=sys.stderr)
        return EXIT_START_FAILURE
    from .console_data.fleet import FleetError

    try:
        fleet = _fleet_spec(args)
    except FleetError as exc:
        print(f"valve-console: {exc}", file=sys.stderr)
        return EXIT_START_FAILURE
    if args.command is None and args.attach and len(args.attach) == 1 and args.token and len(args.token) > 1:
        print("valve-console: one --attach URL takes one --token", file=sys.stderr)
        return EXIT_START_FAILURE
    if (args.command in (None, "fleet") and not args.backend_only) or (args.command == "demo" and not args.headless):
        problem = _no_terminal()
        if problem is not None:
            print(f"valve-console: {problem}", file=sys.stderr)
            return EXIT_START_FAILURE
    try:
        if args.command == "job":
            return _job_main(args)
        if args.command == "gitlab-executor":
            from .gitlab_executor import main as gitlab_executor_main

            return gitlab_executor_main(args)
        if args.command == "serve":
            return _serve_main(args)
        if args.command == "doctor":
            return _doctor_main(args)
        if args.command == "demo":
            if not 1 <= args.duts <= 255:
                print("valve-console: --duts must be between 1 and 255", file=sys.stderr)
                return EXIT_START_FAILURE
            return asyncio.run(_demo_main(args))
        if fleet is not None:
            from .app import fleet_main

            return asyncio.run(fleet_main(fleet))
        if args.attach:
            from .app import attach_main

            token = (args.token[0] if args.token else None) or os.environ.get("VALVE_CONSOLE_TOKEN")
            if token is None and args.data_dir is not None and (args.data_dir / "token").exists():
                token = (args.data_dir / "token").read_text().strip()
            return asyncio.run(attach_main(args.attach[0], token))
        try:
            settings = _settings(args)
        except Exception as exc:  # noqa: BLE001 - pydantic's report, in one line
            print(f"valve-console: invalid setting: {exc}", file=sys.stderr)
            return EXIT_START_FAILURE
        if args.backend_only:
            _setup_logging(settings, to_stderr=True)
            return _run_farm(_backend_main(settings))
        _setup_logging(settings, to_stderr=False)
        return _run_farm(_all_in_one(settings))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
