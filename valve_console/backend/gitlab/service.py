"""RunnerService: GitLab instances and one runner per exposed machine (plus the optional gateway runner), token
verification and renewal, stray clean-up, back-off while GitLab is down, config.toml kept written."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from sqlmodel import Session, select

from ..errors import BadRequest, Conflict, NotFound
from ..events import EventBus
from ..models import GitlabInstance, GitlabRunner, Machine
from ..store import Store
from .bodies import GitlabInstanceCreate, GitlabInstanceUpdate
from .client import NO_EXPIRY_INFO, GitlabApi, GitlabDown, RunnerRefused, _short
from .config import executor_command, gateway_limit, render_config_toml

if TYPE_CHECKING:
    from ..registration import MachineService

log = logging.getLogger(__package__)
MASK = "********"
RETRY_BASE = 2.0  # seconds before the first retry of an unreachable instance; doubles up to the cap
TOKEN_RENEW_MARGIN = 86400.0  # a token expiring within this (or half its lifetime, if shorter) is renewed
# The gateway runner's key in place of a MAC (GitlabRunner.mac_address): normalise_mac never yields it
GATEWAY = "gateway"
GATEWAY_TAG = "CI-gateway"


def _iso(when: Optional[float]) -> Optional[str]:
    if when is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------- the service
class RunnerService:
    """Keeps GitLab runners and config.toml in line with the machines; see the module docstring."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        machines: "MachineService",
        settings: Any,
        api_url: Callable[[], str],
        *,
        changed: Callable[[str, str], None] = lambda mac, action: None,
        on_health_change: Callable[[], None] = lambda: None,
    ) -> None:
        """``changed(mac, "runner")``: told when a machine's runners changed; ``on_health_change()``: when
        state/reason changed."""
        self.store = store
        self.bus = bus
        self.machines = machines
        self.settings = settings
        self.api_url = api_url
        self.config_path = Path(settings.gitlab_runner_config or settings.data_dir / "gitlab-runner" / "config.toml")
        self.builds_dir = self.config_path.parent / "builds"
        self.instances: dict[str, GitlabInstance] = {}
        self.runners: dict[tuple[str, str], GitlabRunner] = {}
        self.runner_errors: dict[tuple[str, str], str] = {}
        # per runner, in memory (no column for it; a restart verifies every token once more): obtained (when
        # the token was got), expires (Unix time or None), verified_at, verify (the last result in words)
        self.tokens: dict[tuple[str, str], dict[str, Any]] = {}
        self.clock: Callable[[], float] = time.time  # the token checks' clock (interval, expiry): tests move it
        self.status: dict[str, dict[str, Any]] = {}
        self.state = "starting"
        self.reason: Optional[str] = None
        self.on_health_change = on_health_change
        self.changed = changed
        self.config_writes = 0
        self.config_written_at: Optional[float] = None  # when config.toml was last written (its mtime at start)
        self.config_runners = 0  # the [[runners]] in config.toml
        self._config_text: Optional[str] = None
        self._apis: dict[str, tuple[tuple[str, str, float], GitlabApi]] = {}
        self._lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._sub: Any = None
        self._task: Optional[asyncio.Task[None]] = None
        self._last_event: Any = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        def load(s: Session) -> tuple[list[GitlabInstance], list[GitlabRunner]]:
            return list(s.exec(select(GitlabInstance)).all()), list(s.exec(select(GitlabRunner)).all())

        instances, runners = await self.store.run(load)
        self.instances = {i.name: i for i in instances}
        self.runners = {(r.instance, r.mac_address): r for r in runners}
        for name in self.instances:
            self._new_status(name)
        try:
            self._config_text = await asyncio.to_thread(self.config_path.read_text, encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            self._config_text = None
        await self.write_config()
        self._health()
        self._sub = self.bus.subscribe(["machine"])
        self._task = asyncio.create_task(self._run(), name="gitlab-runners")
        self._follow_task = asyncio.create_task(self._follow(), name="gitlab-machine-events")

    async def stop(self) -> None:
        if self._sub is not None:
            self._sub.close()
        for task in (self._task, getattr(self, "_follow_task", None)):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._task, getattr(self, "_follow_task", None)) if t is not None), return_exceptions=True
        )

    def _new_status(self, name: str) -> dict[str, Any]:
        st = {
            "state": "starting",
            "reason": None,
            "last_sync": None,
            "last_attempt": None,
            "failures": 0,
            "retry_in": None,
            "dirty": True,
            "next_full": 0.0,  # monotonic time of the next full sync (listing, verification, clean-up)
            "retry_at": None,  # monotonic time before which an unreachable instance is left alone
            "last_verify": None,  # when tokens were last checked (POST /runners/verify), and what came out
            "verify_result": None,
            "version": None,  # GET /version's answer at the last full sync (None: not known)
        }
        self.status[name] = st
        return st

    async def _follow(self) -> None:
        """Every machine change (but our own ``runner`` notices) marks the instances for a sync."""
        while not self._sub.closed:
            batch = await self._sub.get_batch()
            if any(ev.type == "dropped" or ev.data.get("action") != "runner" for ev in batch):
                for st in self.status.values():
                    st["dirty"] = True
                self._wake.set()
                await self.write_config()

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            waits = []
            for st in self.status.values():
                due = st["retry_at"] if st["retry_at"] is not None else (now if st["dirty"] else st["next_full"])
                waits.append(max(0.0, due - now))
            timeout = min(waits) if waits else None
            if timeout is None or timeout > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
            self._wake.clear()
            try:
                await self.sync_due()
            except Exception:  # noqa: BLE001 - logged; the loop must survive
                log.exception("gitlab sync failed")
                await asyncio.sleep(1)

    async def sync_due(self) -> None:
        now = time.monotonic()
        for name in list(self.instances):
            st = self.status.get(name)
            if st is None:
                continue
            if st["retry_at"] is not None and now < st["retry_at"]:
                continue
            full = st["retry_at"] is not None or now >= st["next_full"]
            if full or st["dirty"]:
                try:
                    await self.sync(name, full=full)
                except NotFound:  # removed meanwhile
                    continue

    async def sync(self, name: str, full: bool = True) -> dict[str, Any]:
        """Sync one instance now (full: also verify each runner and delete stray runners)."""
        async with self._lock:
            inst = self.instances.get(name)
            if inst is None:
                raise NotFound(f"no GitLab instance named {name!r}")
            st = self.status[name]
            st["dirty"] = False
            st["last_attempt"] = time.time()
            try:
                await self._sync(inst, full)
            except Exception as exc:  # noqa: BLE001 - GitlabDown, or a bug/odd answer: both retried later
                if not isinstance(exc, GitlabDown):
                    log.exception("gitlab %s: sync failed", name)
                    exc = GitlabDown(f"{type(exc).__name__}: {_short(exc)}")
                st["failures"] += 1
                delay = min(self.settings.gitlab_retry_max, RETRY_BASE * 2 ** (st["failures"] - 1))
                st.update(state="unreachable", reason=str(exc), retry_in=delay, retry_at=time.monotonic() + delay)
                st["dirty"] = True
                log.warning("gitlab %s unreachable (retry in %.0f s): %s", name, delay, exc)
            else:
                if st["state"] != "ok" and st["failures"]:
                    log.info("gitlab %s reachable again", name)
                st.update(state="ok" if inst.expose_runners else "not exposing", reason=None, failures=0)
                st.update(retry_in=None, retry_at=None, last_sync=time.time())
                if full:
                    st["next_full"] = time.monotonic() + self.settings.gitlab_sync_interval
            await self.write_config()
            self._publish()
            return self.instance_json(name)

    # ------------------------------------------------------------------ desired state
    def exposed(self, m: Machine) -> bool:
        return m.ready_for_service and not m.is_retired and m.gitlab_exposed

    def description(self, inst: GitlabInstance, m: Machine) -> str:
        full = self.machines.full_name(m)
        farm = self.machines.farm_name
        return inst.farm_name + full[len(farm) :] if full.startswith(farm) else f"{inst.farm_name}-{full}"

    def desired(self, inst: GitlabInstance) -> dict[str, tuple[str, list[str]]]:
        """mac → (description, tags) for the runners this instance should have."""
        if not inst.expose_runners:
            return {}
        out = {}
        for mac, m in self.machines.machines.items():
            if self.exposed(m):
                tags = list(dict.fromkeys([*m.tags, *m.manual_tags, *inst.farm_tags]))
                out[mac] = (self.description(inst, m), tags)
        if self.settings.gitlab_gateway_runner:
            out[GATEWAY] = self.gateway_runner(inst)
        return out

    @staticmethod
    def gateway_runner(inst: GitlabInstance) -> tuple[str, list[str]]:
        """The gateway runner's (description, tags): valve-infra's, with the instance's farm name. Its name
        has our prefix (so it is ours) and cannot be a machine's (those end in ``-<n>``)."""
        name = f"{inst.farm_name}-gateway"
        return name, [name, GATEWAY_TAG]

    def _api(self, inst: GitlabInstance) -> GitlabApi:
        key = (inst.url, inst.token, self.settings.gitlab_timeout)  # the timeout may change at run time
        cached = self._apis.get(inst.name)
        if cached is None or cached[0] != key:
            cached = (key, GitlabApi(inst.url, inst.token, self.settings.gitlab_timeout))
            self._apis[inst.name] = cached
        return cached[1]

    async def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except (GitlabDown, RunnerRefused):
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            raise GitlabApi.classify(exc, what) from exc

    async def _sync(self, inst: GitlabInstance, full: bool) -> None:
        api = self._api(inst)
        if full:  # what the instance is (GET /version: e.g. "17.0.0-vivian" for Vivian's stand-in), kept if unsaid
            version = await asyncio.to_thread(api.version)
            if version is not None:
                self.status[inst.name]["version"] = version
        want = self.desired(inst)
        changed: set[str] = set()
        tally: dict[str, int] = {}
        row: Optional[GitlabRunner]  # step 2 drops it (None) when the runner is gone
        # 1. runners of machines no longer exposed
        for (iname, mac), row in list(self.runners.items()):
            if iname != inst.name or mac in want:
                continue
            try:
                await self._call(f"DELETE /runners/{row.runner_id}", api.delete, row.runner_id, row.token)
            except RunnerRefused as exc:
                self._runner_error(inst.name, mac, str(exc), changed)
                continue
            log.info("gitlab %s: runner %d of %s deleted", inst.name, row.runner_id, mac)
            await self._forget(inst.name, mac)
            changed.add(mac)
        # 2. create missing runners, update changed ones
        for mac, (description, tags) in want.items():
            row = self.runners.get((inst.name, mac))
            try:
                if row is not None and full:
                    row = await self._check_token(inst, api, row, tally)
                if row is not None and full:
                    remote = await self._call(f"GET /runners/{row.runner_id}", api.get, row.runner_id)
                    if remote is None:
                        log.warning("gitlab %s: runner %d of %s is gone, re-creating", inst.name, row.runner_id, mac)
                        await self._forget(inst.name, mac)
                        row = None
                    elif remote.get("description") != description or sorted(remote.get("tag_list") or []) != sorted(
                        tags
                    ):
                        row.tags = []  # forces the update below
                if row is not None and (row.description != description or sorted(row.tags) != sorted(tags)):
                    found = await self._call(
                        f"PUT /runners/{row.runner_id}", api.update, row.runner_id, description, tags
                    )
                    if found:
                        row.description, row.tags, row.updated_at = description, list(tags), time.time()
                        await self._save(row)
                        log.info("gitlab %s: runner %d of %s updated", inst.name, row.runner_id, mac)
                    else:
                        await self._forget(inst.name, mac)
                        row = None
                    changed.add(mac)
                if row is None:
                    runner_id, token, expires = await self._call(
                        "POST /user/runners", api.create, inst, description, tags
                    )
                    row = GitlabRunner(
                        instance=inst.name,
                        mac_address=mac,
                        runner_id=runner_id,
                        token=token,
                        description=description,
                        tags=list(tags),
                    )
                    await self._save(row)
                    renewed = self.tokens.pop((inst.name, mac), {}).get("renewing")
                    now = self.clock()
                    self.tokens[(inst.name, mac)] = {
                        "obtained": now,
                        "expires": expires,
                        "verified_at": now,  # a token GitLab has just given is valid
                        "verify": f"renewed: {renewed}" if renewed else "valid (new)",
                    }
                    log.info(
                        "gitlab %s: runner %d created for %s (%s)%s",
                        inst.name,
                        runner_id,
                        mac,
                        description,
                        " to replace the old one" if renewed else "",
                    )
                    changed.add(mac)
                if self.runner_errors.pop((inst.name, mac), None) is not None:
                    changed.add(mac)
            except RunnerRefused as exc:
                self._runner_error(inst.name, mac, str(exc), changed)
        for key in [k for k in self.tokens if k[0] == inst.name and k not in self.runners and k[1] not in want]:
            del self.tokens[key]  # a replacement that was never created: its machine is no longer exposed
        if tally:
            st = self.status[inst.name]
            st["last_verify"] = self.clock()
            words = {
                "refused": "refused (replaced)",
                "expiring": "expiring (replaced)",
                "unverified": "unverified (kept)",
            }
            st["verify_result"] = ", ".join(f"{n} {words.get(what, what)}" for what, n in sorted(tally.items()))
        # 3. stray runners of this farm
        if full and inst.token:
            known = {r.runner_id for (iname, _), r in self.runners.items() if iname == inst.name}
            prefix = f"{inst.farm_name}-"
            for remote in await self._call("GET /runners/all", api.list_ours, prefix):
                if remote.get("id") in known:
                    continue
                try:
                    await self._call(f"DELETE /runners/{remote['id']}", api.delete, int(remote["id"]), "")
                    log.info("gitlab %s: stray runner %s (%s) deleted", inst.name, remote["id"], remote["description"])
                except RunnerRefused as exc:
                    log.warning("gitlab %s: cannot delete stray runner %s: %s", inst.name, remote["id"], exc)
        for mac in changed:
            self._machine_notice(mac)

    def _token_info(self, key: tuple[str, str], row: GitlabRunner) -> dict[str, Any]:
        info = self.tokens.get(key)
        if info is None:  # a runner from the database: its token is as old as the row
            info = {"obtained": row.created_at, "expires": None, "verified_at": None, "verify": None}
            self.tokens[key] = info
        return info

    async def _check_token(
        self, inst: GitlabInstance, api: GitlabApi, row: GitlabRunner, tally: dict[str, int]
    ) -> Optional[GitlabRunner]:
        """Verify the runner's token (at most every ``gitlab_verify_interval``) and look at its expiry; a
        refused (403) or expiring token: delete the old runner (best effort) and forget it, so that the
        caller creates a new one with the same description and tags. None then, else the row."""
        key = (row.instance, row.mac_address)
        info = self._token_info(key, row)
        now = self.clock()
        reason = None
        if info["verified_at"] is None or now - info["verified_at"] >= self.settings.gitlab_verify_interval:
            valid, expires, detail = await asyncio.to_thread(api.verify, row.token)
            if expires is not NO_EXPIRY_INFO:
                info["expires"] = expires
            if valid is False:
                # verified_at is left alone: if the replacement fails now, the next full sync tries again
                reason = f"GitLab refused its token ({detail} on POST /runners/verify)"
                tally["refused"] = tally.get("refused", 0) + 1
            else:
                info["verified_at"] = now
                info["verify"] = "valid" if valid else f"unverified: {detail}"
                what = "valid" if valid else "unverified"
                tally[what] = tally.get(what, 0) + 1
                if not valid:
                    log.info("gitlab %s: token of runner %d not verified, kept: %s", inst.name, row.runner_id, detail)
        expires = info["expires"]
        if reason is None and expires is not None:
            margin = min(TOKEN_RENEW_MARGIN, max(0.0, expires - info["obtained"]) / 2)
            if expires - now <= margin:
                reason = f"its token expires at {_iso(expires)}"
                tally["expiring"] = tally.get("expiring", 0) + 1
        if reason is None:
            return row
        log.warning(
            "gitlab %s: runner %d of %s (%s): %s; replacing it",
            inst.name,
            row.runner_id,
            row.mac_address,
            row.description,
            reason,
        )
        try:
            await self._call(f"DELETE /runners/{row.runner_id}", api.delete, row.runner_id, row.token)
        except RunnerRefused as exc:
            log.warning("gitlab %s: old runner %d not deleted: %s", inst.name, row.runner_id, exc)
        await self._forget(row.instance, row.mac_address)
        self.tokens[key] = {"renewing": reason}
        return None

    def _runner_error(self, iname: str, mac: str, reason: str, changed: set[str]) -> None:
        if self.runner_errors.get((iname, mac)) != reason:
            log.warning("gitlab %s: runner of %s: %s", iname, mac, reason)
            self.runner_errors[(iname, mac)] = reason
            changed.add(mac)

    async def _save(self, row: GitlabRunner) -> None:
        values = {name: getattr(row, name) for name in GitlabRunner.model_fields}
        await self.store.upsert(GitlabRunner, values, (row.instance, row.mac_address))
        self.runners[(row.instance, row.mac_address)] = row

    async def _forget(self, iname: str, mac: str) -> None:
        def delete(s: Session) -> None:
            old = s.get(GitlabRunner, (iname, mac))
            if old is not None:
                s.delete(old)

        await self.store.run(delete)
        self.runners.pop((iname, mac), None)
        self.runner_errors.pop((iname, mac), None)
        self.tokens.pop((iname, mac), None)

    def _machine_notice(self, mac: str) -> None:
        if mac == GATEWAY:  # not a machine: the gitlab event (published after every sync) carries it
            return
        if mac in self.machines.machines:
            self.changed(mac, "runner")

    # ------------------------------------------------------------------ views
    def token_json(self, key: tuple[str, str]) -> dict[str, Any]:
        """The token's last check for the JSON views: verified_at (Unix time), verify (words), expiry (ISO)."""
        info = self.tokens.get(key) or {}
        return {
            "verified_at": info.get("verified_at"),
            "verify": info.get("verify"),
            "token_expires_at": _iso(info.get("expires")),
        }

    def runner_info(self, mac: str) -> list[dict[str, Any]]:
        """A machine's runners for its JSON: instance, runner_id (None: none yet), state, error, and the
        token's last verification (verified_at, verify, token_expires_at)."""
        out: list[dict[str, Any]] = []
        if mac == GATEWAY:  # the reserved key is no machine's
            return out
        m = self.machines.machines.get(mac)
        for name, inst in sorted(self.instances.items()):
            row = self.runners.get((name, mac))
            error = self.runner_errors.get((name, mac))
            want = inst.expose_runners and m is not None and self.exposed(m)
            if row is None and error is None and not want:
                continue
            if error:
                state = "error"
            elif row is not None and want:
                state = "ok" if self.status[name]["state"] == "ok" else self.status[name]["state"]
            elif row is not None:
                state = "deleting"
            else:
                state = "pending"
            entry = {"instance": name, "runner_id": row.runner_id if row else None, "state": state, "error": error}
            entry.update(self.token_json((name, mac)) if row is not None else self.token_json(("", "")))
            out.append(entry)
        return out

    def gateway_json(self, name: str) -> Optional[dict[str, Any]]:
        """The instance's gateway runner for its JSON (None: neither wanted nor stored): runner_id, description,
        tags, state (ok, pending, deleting, error, or the instance's state), error and the token's last check."""
        inst = self.instances[name]
        key = (name, GATEWAY)
        row, error = self.runners.get(key), self.runner_errors.get(key)
        want = inst.expose_runners and bool(self.settings.gitlab_gateway_runner)
        if row is None and error is None and not want:
            return None
        if error:
            state = "error"
        elif row is not None:
            state = self.status[name]["state"] if want else "deleting"
        else:
            state = "pending"
        description, tags = (row.description, list(row.tags)) if row is not None else self.gateway_runner(inst)
        out = {"runner_id": row.runner_id if row else None, "description": description, "tags": tags}
        out.update(state=state, error=error, **self.token_json(key if row is not None else ("", "")))
        return out

    def instance_json(self, name: str) -> dict[str, Any]:
        inst = self.instances.get(name)
        if inst is None:
            raise NotFound(f"no GitLab instance named {name!r}")
        st = self.status[name]
        return {
            "name": inst.name,
            "url": inst.url,
            "token": MASK if inst.token else "",
            "registration_token": MASK if inst.registration_token else None,
            "farm_name": inst.farm_name,
            "expose_runners": inst.expose_runners,
            "farm_tags": list(inst.farm_tags),
            "state": st["state"],
            "reason": st["reason"],
            "last_sync": st["last_sync"],
            "last_attempt": st["last_attempt"],
            "failures": st["failures"],
            "retry_in": st["retry_in"],
            "runners": sum(1 for (iname, _) in self.runners if iname == name),  # the gateway's included
            "gateway_runner": self.gateway_json(name),
            "last_verify": st["last_verify"],
            "verify_result": st["verify_result"],
            "version": st.get("version"),
        }

    def list_json(self) -> dict[str, Any]:
        runners = [
            {
                "instance": r.instance,
                # the gateway runner is no machine's: no MAC, and flagged
                "mac_address": None if key[1] == GATEWAY else r.mac_address,
                "gateway": key[1] == GATEWAY,
                "runner_id": r.runner_id,
                "description": r.description,
                "tags": list(r.tags),
                "error": self.runner_errors.get(key),
                **self.token_json(key),
            }
            for key, r in sorted(self.runners.items())
        ]
        return {
            "instances": {name: self.instance_json(name) for name in sorted(self.instances)},
            "runners": runners,
            "config_path": str(self.config_path),
            "config_written_at": self.config_written_at,
            "config_runners": self.config_runners,
            "allowed_users": list(self.settings.gitlab_allowed_users),
            "allowed_namespaces": list(self.settings.gitlab_allowed_namespaces),
            "state": self.state,
            "reason": self.reason,
        }

    def _summary(self) -> tuple[str, Optional[str]]:
        if not self.instances:
            return "ok", "no GitLab instance configured"
        parts, bad = [], False
        for name in sorted(self.instances):
            st = self.status[name]
            n = sum(1 for (iname, _) in self.runners if iname == name)
            if st["state"] in ("ok", "not exposing"):
                when = time.strftime("%H:%M:%S", time.localtime(st["last_sync"])) if st["last_sync"] else "-"
                parts.append(f"{name} {st['state']} ({n} runners, synced {when})")
            else:
                bad = bad or st["state"] != "starting"
                parts.append(f"{name} {st['state']}" + (f": {st['reason']}" if st["reason"] else ""))
        return ("degraded" if bad else "ok"), "; ".join(parts)

    def _health(self) -> None:
        self.state, self.reason = self._summary()
        self.on_health_change()

    def _publish(self) -> None:
        data = self.list_json()
        key = json.dumps({k: v for k, v in data.items()}, sort_keys=True, default=str)
        self._health()
        if key != self._last_event:
            self._last_event = key
            self.bus.publish("gitlab", data)

    # ------------------------------------------------------------------ instances (API)
    async def add_instance(self, body: GitlabInstanceCreate) -> dict[str, Any]:
        if body.name in self.instances:
            raise Conflict(f"a GitLab instance named {body.name!r} exists already")
        if not body.token and not body.registration_token:
            raise BadRequest("give a token able to create runners (create_runner scope) or a registration_token")
        inst = GitlabInstance(
            name=body.name,
            url=body.url,
            token=body.token,
            registration_token=body.registration_token or None,
            farm_name=body.farm_name or self.machines.farm_name,
            expose_runners=body.expose_runners,
            farm_tags=list(body.farm_tags),
        )
        await self.check_instance(inst)
        if inst.name in self.instances:  # added by another caller while GitLab was asked
            raise Conflict(f"a GitLab instance named {inst.name!r} exists already")
        await self._store_instance(inst)
        self._new_status(inst.name)
        self._publish()
        self._wake.set()
        log.info("gitlab instance %s (%s) added", inst.name, inst.url)
        return self.instance_json(inst.name)

    async def update_instance(self, name: str, patch: GitlabInstanceUpdate) -> dict[str, Any]:
        old = self.instances.get(name)
        if old is None:
            raise NotFound(f"no GitLab instance named {name!r}")
        inst = old.model_copy()
        fields = patch.model_dump(exclude_unset=True)
        for key, value in fields.items():
            if value is None and key in ("url", "token", "farm_name", "expose_runners", "farm_tags"):
                raise BadRequest(f"{key} cannot be null")
            setattr(inst, key, value)
        if not inst.token and not inst.registration_token:  # the patch is valid; the instance would not be
            raise Conflict("the instance would have neither a token nor a registration_token: keep one of them")
        if (inst.url, inst.token, inst.registration_token) != (old.url, old.token, old.registration_token):
            await self.check_instance(inst)  # a new URL or token is tried before it is stored
        async with self._lock:
            if inst.url != old.url:
                self.status[name]["version"] = None  # another GitLab: known again at the next full sync
            if inst.url != old.url or inst.farm_name != old.farm_name:
                # the runners belong to the old instance: forget them (full syncs clean leftovers up)
                await self._delete_runners(old)
            await self._store_instance(inst)
            st = self.status[name]
            st.update(dirty=True, next_full=0.0, retry_at=None, failures=0)
        self._publish()
        self._wake.set()
        return self.instance_json(name)

    async def check_instance(self, inst: GitlabInstance) -> None:
        """Ask GitLab whether ``inst``'s URL answers and takes its token (in a worker thread: python-gitlab
        blocks); BadRequest with GitLab's answer in words when not, so that nothing wrong is stored."""
        def probe() -> Optional[str]:
            try:
                api = GitlabApi(inst.url, inst.token, self.settings.gitlab_timeout)
            except Exception as exc:  # noqa: BLE001 - a URL python-gitlab does not take
                return f"GitLab at {inst.url} cannot be asked: {type(exc).__name__}: {_short(exc)}"
            return api.check(inst.url, inst.token)

        problem = await asyncio.to_thread(probe)
        if problem is not None:
            log.info("gitlab instance %s not stored: %s", inst.name, problem)
            raise BadRequest(problem)

    async def renew(self, name: str, mac: str) -> dict[str, Any]:
        """Replace a runner's token now, as a refused or expiring one is: the old runner is deleted on GitLab
        (a gone one is fine), a new one is created with the same description and tags; answers the new
        runner (its ``verify`` says ``renewed: asked by the operator``)."""
        inst = self.instances.get(name)
        if inst is None:
            raise NotFound(f"no GitLab instance named {name!r}")
        key = (name, mac)
        async with self._lock:
            row = self.runners.get(key)
            if row is None:
                what = "the gateway" if mac == GATEWAY else mac
                raise NotFound(f"{what} has no runner on {name}: nothing to renew")
            api = self._api(inst)
            try:
                await self._call(f"DELETE /runners/{row.runner_id}", api.delete, row.runner_id, row.token)
            except (GitlabDown, RunnerRefused) as exc:
                raise Conflict(f"the old runner {row.runner_id} could not be deleted, token kept: {exc}") from None
            log.info("gitlab %s: runner %d of %s deleted to renew its token (operator)", name, row.runner_id, mac)
            await self._forget(name, mac)
            self.tokens[key] = {"renewing": "asked by the operator"}
            self.status[name]["dirty"] = True
        await self.sync(name, full=False)  # creates the new runner (or says why not)
        for entry in self.list_json()["runners"]:
            if entry["instance"] == name and (entry["mac_address"] or GATEWAY) == mac:
                return dict(entry)
        st = self.status.get(name) or {}
        why = self.runner_errors.get(key) or st.get("reason") or "the machine is no longer exposed"
        raise Conflict(f"the old runner was deleted; no new one yet ({why}): the next sync tries again")

    async def remove_instance(self, name: str) -> dict[str, Any]:
        inst = self.instances.get(name)
        if inst is None:
            raise NotFound(f"no GitLab instance named {name!r}")
        async with self._lock:
            left = await self._delete_runners(inst)

            def delete(s: Session) -> None:
                row = s.get(GitlabInstance, name)
                if row is not None:
                    s.delete(row)

            await self.store.run(delete)
            self.instances.pop(name, None)
            self.status.pop(name, None)
            self._apis.pop(name, None)
        await self.write_config()
        self._publish()
        log.info("gitlab instance %s removed", name)
        return {"removed": name, "runners_left_on_gitlab": left}

    async def _delete_runners(self, inst: GitlabInstance) -> list[int]:
        """Delete the instance's runners on GitLab (once, best effort) and forget them; the ids left."""
        api = self._api(inst)
        left = []
        for (iname, mac), row in list(self.runners.items()):
            if iname != inst.name:
                continue
            try:
                await self._call(f"DELETE /runners/{row.runner_id}", api.delete, row.runner_id, row.token)
            except (GitlabDown, RunnerRefused) as exc:
                log.warning("gitlab %s: runner %d of %s not deleted: %s", inst.name, row.runner_id, mac, exc)
                left.append(row.runner_id)
            await self._forget(iname, mac)
            self._machine_notice(mac)
        return left

    async def _store_instance(self, inst: GitlabInstance) -> None:
        values = {k: getattr(inst, k) for k in GitlabInstance.model_fields}
        await self.store.upsert(GitlabInstance, values, inst.name)
        self.instances[inst.name] = inst

    # ------------------------------------------------------------------ config.toml
    def config_text(self) -> str:
        return self._render_config()[0]

    def _render_config(self) -> tuple[str, int]:
        """config.toml's text and how many [[runners]] it holds."""
        api = self.api_url()
        exe = executor_command()
        # the pre-build filter goes to the prepare stage's args (none: every job is admitted)
        acl = [arg for user in self.settings.gitlab_allowed_users for arg in ("--allow-user", user)]
        acl += [arg for ns in self.settings.gitlab_allowed_namespaces for arg in ("--allow-namespace", ns)]
        entries: list[dict[str, Any]] = []  # TOML tables: str, int and list values, the custom sub-table
        for (iname, mac), row in sorted(self.runners.items(), key=lambda kv: (kv[0][0], kv[1].description, kv[0][1])):
            inst = self.instances.get(iname)
            if inst is None or not inst.expose_runners:
                continue
            if mac == GATEWAY:
                # the gateway runner: no machine, so the CI script's `job run` needs a target (-i, tags)
                if not self.settings.gitlab_gateway_runner:
                    continue
                target, limit, environment = ["--gateway"], gateway_limit(), [f"VALVE_CONSOLE_URL={api}"]
            else:
                m = self.machines.machines.get(mac)
                if m is None or not self.exposed(m):
                    continue
                target, limit = ["--machine", mac], 1
                environment = [f"VALVE_CONSOLE_MACHINE={mac}", f"VALVE_CONSOLE_URL={api}"]
            common = [*target, "--api", api, "--data-dir", str(self.settings.data_dir)]
            common += ["--builds-dir", str(self.builds_dir)]
            custom: dict[str, Any] = {}
            for stage in ("config", "prepare", "run", "cleanup"):
                custom[f"{stage}_exec"] = exe
                # the stage comes last: gitlab-runner appends "<script> <stage name>" to run's args
                custom[f"{stage}_args"] = ["gitlab-executor", *common, *(acl if stage == "prepare" else []), stage]
            entries.append(
                {
                    "name": row.description,
                    "url": inst.url,
                    "id": row.runner_id,
                    "token": row.token,
                    "limit": limit,
                    "executor": "custom",
                    "builds_dir": str(self.builds_dir),
                    "cache_dir": str(self.config_path.parent / "cache"),
                    "environment": environment,
                    "custom": custom,
                }
            )
        head = {
            # every runner may use its whole limit at once (the gateway runner's is above 1 on big gateways)
            "concurrent": max(1, sum(entry["limit"] for entry in entries)),
            "check_interval": 0,
            "session_server": {"session_timeout": 1800},
        }
        return render_config_toml(head, entries), len(entries)

    async def write_config(self) -> bool:
        """Write config.toml (atomically, 0600) if its text changed; True if written."""
        from ..boot.files import write_atomically

        async with self._write_lock:  # one writer: two callers must not both see the old text
            text, count = self._render_config()
            if text == self._config_text:
                self.config_runners = count
                if self.config_written_at is None:  # the file of an earlier run: when it was written
                    try:
                        self.config_written_at = (await asyncio.to_thread(self.config_path.stat)).st_mtime
                    except OSError:
                        pass
                return False

            def write() -> None:
                os.makedirs(self.config_path.parent, exist_ok=True)
                write_atomically(self.config_path, text, mode=0o600)

            try:
                await asyncio.to_thread(write)
            except OSError as exc:
                log.error("cannot write %s: %s", self.config_path, exc)
                return False
            self._config_text = text
            self.config_runners = count
            self.config_written_at = time.time()
            self.config_writes += 1
            return True
