"""Command palette (ctrl+p or ``:``, k9s style): the farm's actions by name.

"power on vpdu1/3 (vivian-virtio-1)", "open console <machine>", "edit <machine>",
"retire <machine>" / "activate <machine>", "details <machine>", "train <machine>", "stop training
<machine>", "skip training <machine>", "go to <screen>", "discover <pdu>/<port>",
"find outlets on <pdu>", "cancel discovery", "cancel job <id>", "edit settings". Power commands still ask for
confirmation: they go through the same app actions as the keys.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Callable, Iterator, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

from ..console_data import port_sort_key
from ..widgets.banner import SCREENS
from .machine_detail import open_details, training_action

if TYPE_CHECKING:
    from ..app import ConsoleApp


class FarmCommands(Provider):
    @property
    def console_app(self) -> "ConsoleApp":
        return cast("ConsoleApp", self.app)

    def commands(self) -> Iterator[tuple[str, Callable[[], None], str]]:
        app = self.console_app
        model = app.model
        for _key, mode, title in SCREENS:
            yield f"go to {title.lower()}", partial(app.go, mode), f"switch to the {title} screen"
        for name in sorted(model.pdus):
            ports = sorted(model.pdus[name].ports, key=port_sort_key)
            for port in ports:
                machine = model.machine_on(name, port)
                suffix = f" ({machine.full_name})" if machine else ""
                for verb in ("on", "off", "reboot"):
                    yield (f"power {verb} {name}/{port}{suffix}", partial(app.power_outlet, name, port, verb),
                           f"switch outlet {port} of {name} {verb} (asks first)")
        for name in sorted(model.pdus):
            for port in model.free_ports(name):
                yield (f"discover {name}/{port}", partial(app.discover_outlet, name, port),
                       f"power outlet {port} of {name} on and give it to the next machine that registers (asks first)")
            yield (f"find outlets on {name}", partial(app.find_outlets, name),
                   f"discover every free outlet of {name}, one after another (asks first)")
        if model.discovery.current or model.discovery.queue:
            yield "cancel discovery", app.cancel_discovery, "stop the running outlet discovery (asks first)"
        for mac in sorted(model.machines, key=model.machine_name):
            machine = model.machines[mac]
            name = model.machine_name(mac)
            yield f"open console {name}", partial(app.open_console, mac), f"the console of {mac}"
            yield f"edit {name}", partial(app.edit_machine, mac), f"the machine form of {mac}"
            verb = "activate" if machine.is_retired else "retire"
            yield f"{verb} {name}", partial(app.toggle_retired, mac), f"{verb} {mac} (asks first)"
            if machine.pdu.name:
                yield f"power cycle {name}", partial(app.power_cycle, mac), "reboot its outlet (asks first)"
            yield (f"details {name}", partial(open_details, app, mac),
                   f"{mac}: its training, per-loop results and failures")
            training = machine.training
            if not machine.is_retired:
                if machine.state == "TRAINING" and training and training.state in ("registering", "looping"):
                    yield (f"stop training {name}", partial(training_action, app, mac, "stop"),
                           "stop Sgt. Hartman; it stays not ready for service (asks first)")
                else:
                    yield (f"train {name}", partial(training_action, app, mac, "start"),
                           "run Sgt. Hartman's registration and boot loops now (asks first)")
                if not machine.ready_for_service:
                    yield (f"skip training {name}", partial(training_action, app, mac, "skip"),
                           "ready for service without boot loops (asks first)")
        for job_id, job in model.jobs.items():
            if job.status in ("QUEUED", "RUNNING"):
                yield (f"cancel job {job_id} ({model.job_machine_name(job)})", partial(app.cancel_job, job_id),
                       f"cancel the {str(job.status).lower()} job {job_id} (asks first)")
        yield "add pdu", app.add_pdu, "add a PDU (driver, name, config)"
        yield ("edit settings", app.edit_settings,
               "change the run-time settings: training counts, off delay, GitLab intervals, trusted networks")

    async def discover(self) -> Hits:
        for text, callback, help_text in self.commands():
            if text.startswith(("go to", "open console", "edit ")):
                yield DiscoveryHit(text, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, callback, help_text in self.commands():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), callback, text=text, help=help_text)
