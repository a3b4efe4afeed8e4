"""Jobs: schema, templating, target peeking, deployments, timeouts, watchdogs and the console state machine."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from valve_console.backend.boot import BootConfig, ipxe_script
from valve_console.backend.jobs import (
    BUILTIN_TEMPLATES,
    ConsolePatterns,
    DEFAULT_SESSION_END,
    Job,
    JobConsole,
    JobConsoleState,
    JobError,
    JobStatus,
    LineMatch,
    MachineInfo,
    Target,
    Timeout,
    Timeouts,
    TimeoutsSpec,
    builtin_job,
    job_variables,
    peek_target,
    render_job,
)

DATA = Path(__file__).parent / "data"
SAMPLE = (DATA / "sample_job.yml").read_text()
TEMPLATED = (DATA / "templated_job.yml.j2").read_text()
NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)

MACHINE = MachineInfo(
    mac_address="52:54:00:11:22:04",
    base_name="gfx10",
    full_name="farm-gfx10-1",
    tags=("amdgpu:gfxversion:gfx10", "amdgpu:codename:NAVI21"),
    ip_address="10.42.0.14",
    local_tty_device="ttyS1",
    ready_for_service=True,
)

MINIMAL = """\
version: 1
target:
  tags: []
console_patterns:
  session_end:
    regex: '^END$'
deployment:
  start:
    kernel:
      url: http://10.42.0.1/kernel
      cmdline: console=ttyS0
    initramfs:
      url: http://10.42.0.1/initrd
"""


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def load(text: str, **kw) -> Job:
    kw.setdefault("now", NOW)
    return Job.load(text, **kw)


def console_for(patterns_yaml: str, *, timeouts_yaml: str = "", has_client: bool = True, clock=None, **kw):
    text = MINIMAL.replace("console_patterns:\n  session_end:\n    regex: '^END$'\n", patterns_yaml)
    if timeouts_yaml:
        text += timeouts_yaml
    job = load(text)
    clock = clock or FakeClock()
    timeouts = job.make_timeouts(clock=clock, now=NOW)
    return job, timeouts, job.make_console(timeouts, has_client=has_client, **kw), clock


# ------------------------------------------------------------------------------------------ the sample job


def test_sample_job_parses_with_every_feature() -> None:
    job = Job.parse(SAMPLE, env={}, now=NOW)
    assert job.version == 1
    assert job.deadline == datetime(2099, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    assert job.target.id == "52:54:00:11:22:04"  # unquoted MAC: not a base-60 number
    assert job.target.tags == ["amdgpu:gfxversion:gfx10", "amdgpu:codename:NAVI21"]
    t = job.timeouts
    assert t.overall.duration == timedelta(hours=1, minutes=30)
    assert (t.infra_setup.duration, t.infra_setup.retries) == (timedelta(minutes=10), 1)
    assert t.infra_teardown.duration == timedelta(minutes=5)
    assert (t.boot_cycle.duration, t.boot_cycle.retries) == (timedelta(minutes=20), 2)
    assert t.console_activity.duration == timedelta(minutes=10, seconds=30)
    assert t.first_console_activity.duration == timedelta(minutes=2, milliseconds=500)
    assert t.first_console_activity.retries == 3
    assert t.watchdogs["deqp"].duration == timedelta(minutes=1)
    p = job.console_patterns
    assert p.session_end.search(b"[  OK  ] It's now safe to turn off your computer\r\n")
    assert p.session_reboot.search(b"[   12.345678] reboot: Restarting system\r\n")
    assert p.job_success.search(b"+ b2c: Execution is over, pipeline status: 0\r\n")
    assert p.job_warn and p.machine_unfit_for_service
    assert set(p.watchdogs["deqp"].model_fields) == {"start", "reset", "stop"}
    cmdline = job.deployment_for_boot(0).cmdline
    assert cmdline.startswith('b2c.container="-ti --tls-verify=false docker://ci-gateway:8002/mesa/')
    assert "b2c.pipefail b2c.cache_device=auto" in cmdline  # the list joined with spaces
    assert 'b2c.minio="gateway,http://10.42.0.1:9000,' in cmdline
    assert "console=ttyS1,115200 SALAD.machine_id=52:54:00:11:22:04" in cmdline


def test_sample_job_renders_unchanged() -> None:
    assert render_job(SAMPLE, MACHINE, env={}) == SAMPLE
    assert Job.parse(SAMPLE, MACHINE, env={}, now=NOW).rendered == SAMPLE


def test_sample_job_boots_through_ipxe() -> None:
    job = Job.parse(SAMPLE, env={}, now=NOW)
    script = ipxe_script(job.deployment_for_boot(0), platform="efi")
    assert "amdgpu.gpu_recovery=1${semicolon:string}amdgpu.lockup_timeout=10000" in script
    assert "kernel http://10.42.0.1:9000/boot/kernel-5.16-for-valve-ci initrd=initrd b2c.container=" in script


# ------------------------------------------------------------------------------------------ deployments


def test_continue_inherits_and_overrides_start() -> None:
    job = Job.parse(SAMPLE, env={}, now=NOW)
    first = job.deployment_for_boot(0)
    assert first == BootConfig(
        kernel_url="http://10.42.0.1:9000/boot/kernel-5.16-for-valve-ci",
        initrd_url="http://10.42.0.1:9000/boot/b2c_initrd_v0.9.5",
        cmdline=first.cmdline,
    )
    for n in (1, 2, 7):
        again = job.deployment_for_boot(n)
        assert again.kernel_url == first.kernel_url  # inherited from start
        assert again.initrd_url == "http://10.42.0.1:9000/boot/b2c_initrd_v0.9.5-resume"  # its own URL
        # the cmdline is the continue cmdline, not a URL (valve-infra set kernel_cmdline = kernel_url)
        assert again.cmdline.startswith('b2c.container="-ti') and again.cmdline.endswith("52:54:00:11:22:04")
        assert "--resume" in again.cmdline and "http://10.42.0.1:9000/boot/kernel" not in again.cmdline
    with pytest.raises(ValueError):
        job.deployment_for_boot(-1)


def test_continue_partial_override_keeps_the_rest() -> None:
    text = MINIMAL + "  continue:\n    kernel:\n      url: http://10.42.0.1/kernel-2\n"
    job = load(text)
    expected = BootConfig("http://10.42.0.1/kernel-2", "http://10.42.0.1/initrd", "console=ttyS0")
    assert job.deployment_for_boot(1) == expected
    assert job.deployment_for_boot(0).kernel_url == "http://10.42.0.1/kernel"


def test_without_continue_every_boot_is_start() -> None:
    job = load(MINIMAL)
    assert job.deployment_for_boot(0) == job.deployment_for_boot(5)
    assert job.deployment.continue_ is None


def test_cmdline_list_and_folded_string() -> None:
    job = load(MINIMAL.replace("cmdline: console=ttyS0", "cmdline:\n        - a=1\n        - b=2;c\n"))
    assert job.deployment_for_boot(0).cmdline == "a=1 b=2;c"
    job = load(MINIMAL.replace("cmdline: console=ttyS0", "cmdline: >\n        a=1\n        b=2\n"))
    assert job.deployment_for_boot(0).cmdline == "a=1 b=2"


# ------------------------------------------------------------------------------------------ invalid jobs


def _with(old: str, new: str) -> str:
    assert old in MINIMAL
    return MINIMAL.replace(old, new)


INVALID = [
    pytest.param(
        _with("'^END$'", "'a('"),
        6,
        "console_patterns.session_end.regex",
        "invalid regex 'a(' (missing ), unterminated subpattern)",
        id="bad-regex",
    ),
    pytest.param(MINIMAL + "colour: blue\n", 14, "colour", "unknown field", id="unknown-top-level"),
    pytest.param(
        _with("    initramfs:", "      initrd: foo\n    initramfs:"),
        12,
        "deployment.start.kernel.initrd",
        "unknown field",
        id="unknown-nested",
    ),
    pytest.param(
        _with("console_patterns:\n  session_end:\n    regex: '^END$'\n", ""),
        1,
        "console_patterns",
        "field required",
        id="missing-console-patterns",
    ),
    pytest.param(
        _with("      url: http://10.42.0.1/kernel\n", ""),
        9,
        "deployment.start.kernel.url",
        "field required",
        id="missing-kernel-url",
    ),
    pytest.param(_with("version: 1", "version: 2"), 1, "version", "only version 1 is supported", id="version-2"),
    pytest.param(
        _with("target:\n  tags: []\n", "target: {}\n"), 2, "target", "needs an id, tags, or both", id="empty-target"
    ),
    pytest.param(
        MINIMAL + "timeouts:\n  overall:\n    hours: 1\n    retries: 1\n",
        15,
        "timeouts.overall",
        "cannot be retried",
        id="overall-retries",
    ),
    pytest.param(
        MINIMAL + "timeouts:\n  infra_teardown:\n    minutes: 1\n    retries: 2\n",
        15,
        "timeouts.infra_teardown",
        "cannot be retried",
        id="teardown-retries",
    ),
    pytest.param(
        MINIMAL + "timeouts:\n  boot_cycle:\n    minutes: -1\n",
        16,
        "timeouts.boot_cycle.minutes",
        "greater than or equal to 0",
        id="negative-minutes",
    ),
    pytest.param(
        MINIMAL + "timeouts:\n  boot_cycle:\n    minutes: 1\n    retries: 'two'\n",
        17,
        "timeouts.boot_cycle.retries",
        "valid integer",
        id="retries-not-int",
    ),
    pytest.param(
        MINIMAL + "timeouts:\n  boot_cycle:\n    retries: 3\n", 15, "timeouts.boot_cycle", "needs a duration", id="zero"
    ),
    pytest.param(
        MINIMAL + "timeouts:\n  reboot_cycle:\n    minutes: 3\n",
        15,
        "timeouts.reboot_cycle",
        "unknown field",
        id="unknown-timeout",
    ),
    pytest.param(
        _with("cmdline: console=ttyS0", 'cmdline: "console=ttyS0\\nkernel http://evil/x"'),
        11,
        "deployment.start.kernel.cmdline",
        "control character",
        id="newline-cmdline",
    ),
    pytest.param(
        _with("cmdline: console=ttyS0", "cmdline: [quiet, 3]"),
        11,
        "deployment.start.kernel.cmdline",
        "must be strings",
        id="cmdline-item-not-str",
    ),
    pytest.param(
        _with("cmdline: console=ttyS0", "cmdline: a || shell"),
        11,
        "deployment.start.kernel.cmdline",
        "'||'",
        id="ipxe-operator-cmdline",
    ),
    pytest.param(
        _with("url: http://10.42.0.1/initrd", "url: 'http://10.42.0.1/initrd boot'"),
        13,
        "deployment.start.initramfs.url",
        "contains ' '",
        id="space-in-url",
    ),
    pytest.param(
        _with("url: http://10.42.0.1/kernel", "url: ftp://10.42.0.1/kernel"),
        10,
        "deployment.start.kernel.url",
        "must start with http://",
        id="bad-scheme",
    ),
    pytest.param(
        _with("    regex: '^END$'\n", "    regex: '^END$'\n  watchdogs:\n    wd:\n      start: {regex: a}\n"),
        8,
        "console_patterns.watchdogs.wd.reset",
        "field required",
        id="watchdog-missing-reset",
    ),
    pytest.param(
        _with(
            "    regex: '^END$'\n",
            "    regex: '^END$'\n  watchdogs:\n    wd:\n      start: {regex: a}\n"
            "      reset: {regex: b}\n      stop: {regex: c}\n",
        ),
        8,
        "console_patterns.watchdogs.wd",
        "no timeout for this watchdog",
        id="watchdog-without-timeout",
    ),
    pytest.param(
        _with("    regex: '^END$'\n", "    pattern: '^END$'\n"),
        5,
        "console_patterns.session_end.regex",
        "field required",
        id="no-regex",
    ),
    pytest.param(_with("  tags: []\n", "  tags: []\n  tags: [a]\n"), 4, "target.tags", "duplicate key", id="duplicate"),
    pytest.param(
        _with("deadline" if False else "version: 1\n", "version: 1\ndeadline: 2001-01-01 00:00:00\n"),
        2,
        "deadline",
        "has passed",
        id="deadline-passed",
    ),
    pytest.param(
        _with("  tags: []\n", "  tags: [a\n"), 4, None, "invalid YAML", id="yaml-syntax"
    ),
    pytest.param("- a\n- b\n", 1, None, "must be a YAML mapping", id="not-a-mapping"),
    pytest.param("# nothing\n", 1, None, "empty", id="empty"),
]


@pytest.mark.parametrize(("text", "line", "field", "message"), INVALID)
def test_invalid_jobs_name_line_and_field(text: str, line: int, field: str | None, message: str) -> None:
    with pytest.raises(JobError) as info:
        load(text)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.line, err.field) == (line, field), str(err)
    assert message in err.message
    expected = f"line {line}: " + (f"{field}: " if field else "")
    assert str(err).startswith(expected)


def test_error_message_format_matches_the_documented_example() -> None:
    text = _with("  session_end:\n    regex: '^END$'\n", "  job_success:\n    regex: 'a('\n")
    with pytest.raises(JobError) as info:
        load(text)
    assert str(info.value) == (
        "line 6: console_patterns.job_success.regex: invalid regex 'a(' (missing ), unterminated subpattern)"
    )


def test_every_issue_is_reported_in_line_order() -> None:
    text = _with("version: 1", "version: 3").replace("'^END$'", "'('") + "extra: 1\n"
    with pytest.raises(JobError) as info:
        load(text)
    assert [(i.line, i.field) for i in info.value.issues] == [
        (1, "version"),
        (6, "console_patterns.session_end.regex"),
        (14, "extra"),
    ]
    assert len(str(info.value).splitlines()) == 3


def test_yaml_aliases_bomb_is_refused() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 8):
        bomb += f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]\n"
    with pytest.raises(JobError, match="too many YAML nodes"):
        load(bomb)


def test_default_session_end_is_the_kernel_power_down() -> None:
    job = load(_with("  session_end:\n    regex: '^END$'\n", "  job_success:\n    regex: ok\n"))
    assert job.console_patterns.session_end.regex == DEFAULT_SESSION_END
    assert job.console_patterns.session_end.search(b"[   42.123456] reboot: Power Down\n")
    assert not job.console_patterns.session_end.search(b"reboot: Power Down\n")


def test_default_timeouts() -> None:
    job = load(MINIMAL)
    assert job.timeouts.overall.duration == timedelta(hours=6)
    assert job.timeouts.infra_teardown.duration == timedelta(minutes=10)
    assert job.timeouts.boot_cycle is None and job.timeouts.watchdogs == {}


# ------------------------------------------------------------------------------------------ templating


def test_template_variables() -> None:
    template = (
        "id: {{ machine_id }}\ntags: {{ machine_tags | join(',') }}\ntty: {{ local_tty_device }}\n"
        "ready: {{ ready_for_service }}\n"
        "name: {{ machine.full_name }} {{ machine.base_name }} {{ machine.ip_address }}\n"
        "bucket: {{ job_bucket }} {{ minio_url }}\n"
    )
    out = render_job(template, MACHINE, env={}, variables={"job_bucket": "job-x", "minio_url": "http://m:9000"})
    assert out == (
        "id: 52:54:00:11:22:04\ntags: amdgpu:gfxversion:gfx10,amdgpu:codename:NAVI21\ntty: ttyS1\n"
        "ready: True\nname: farm-gfx10-1 gfx10 10.42.0.14\nbucket: job-x http://m:9000\n"
    )


def test_env_prefix_is_removed_not_stripped_as_a_character_set() -> None:
    env = {
        "EXECUTOR_JOB__TOKEN": "t0k",
        "EXECUTOR_JOB__EXTRA": "xtra",
        "EXECUTOR_JOB__FDO_PROXY_REGISTRY": "ci-gateway:8002",
        "EXECUTOR_JOB__": "ignored",
        "OTHER": "no",
        "MINIO_URL": "http://10.42.0.1:9000",
    }
    values = job_variables(None, env)
    assert values == {
        "token": "t0k",
        "extra": "xtra",
        "fdo_proxy_registry": "ci-gateway:8002",
        "minio_url": "http://10.42.0.1:9000",
    }
    assert render_job("{{ token }} {{ extra }}", env=env) == "t0k xtra"


def test_machine_and_explicit_variables_win_over_env() -> None:
    env = {"EXECUTOR_JOB__MACHINE_ID": "evil", "MINIO_URL": "http://env"}
    values = job_variables(MACHINE, env, {"minio_url": "http://bucket"})
    assert values["machine_id"] == MACHINE.mac_address and values["minio_url"] == "http://bucket"


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECUTOR_JOB__LOCAL_REGISTRY", "ci-gateway:8004")
    assert render_job("{{ local_registry }}") == "ci-gateway:8004"


def test_machine_from_json() -> None:
    info = MachineInfo.from_json(
        {"mac_address": "aa:bb:cc:dd:ee:ff", "base_name": "virtio", "full_name": "f-virtio-1", "tags": ["t"],
         "ip_address": "10.42.0.5", "local_tty_device": None, "ready_for_service": False, "state": "IDLE"}
    )
    assert render_job("{{ machine_id }} {{ machine.tags }} {{ local_tty_device }}", info, env={}) == (
        "aa:bb:cc:dd:ee:ff ['t'] None"
    )


def test_missing_variable_is_named_with_its_line() -> None:
    with pytest.raises(JobError) as info:
        render_job("version: 1\n\nurl: {{ minio_url }}/kernel\n", MACHINE, env={})
    assert info.value.line == 3
    assert "'minio_url' is undefined" in str(info.value)
    with pytest.raises(JobError, match="'job_bucket' is undefined"):
        Job.parse(MINIMAL.replace("console=ttyS0", "b={{ job_bucket }}"), MACHINE, env={}, now=NOW, strict=True)


def test_an_undefined_variable_renders_empty_as_in_valve_infra() -> None:
    """valve-infra rendered with Jinja2's default Undefined: empty text, false in tests; we also note the names."""
    template = "b={{ job_bucket }}{% if nope %}x{% endif %}{% for i in gone %}y{% endfor %}"
    text = MINIMAL.replace("console=ttyS0", template)
    job = Job.parse(text, MACHINE, env={}, now=NOW)
    assert " b= " in f" {job.deployment.start.kernel.cmdline} "
    assert job.undefined_names == ["job_bucket", "nope", "gone"]
    with pytest.raises(JobError, match="undefined"):  # an attribute of an undefined name still fails, as it did
        Job.parse(MINIMAL.replace("console=ttyS0", "b={{ nope.attr }}"), MACHINE, env={}, now=NOW)


def test_template_syntax_error_has_its_line() -> None:
    with pytest.raises(JobError) as info:
        render_job("a: 1\nb: {% if %}\n", env={})
    assert info.value.line == 2 and "template syntax error" in str(info.value)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ machine.__class__ }}x{{ ().__class__.__bases__[0].__subclasses__() }}",
        "{{ 'x' * 100000000 }}",
        "{{ 10 ** 100000 }}",
        "{% include '/etc/passwd' %}",
    ],
)
def test_templates_are_sandboxed(template: str) -> None:
    with pytest.raises(JobError, match="template"):
        render_job(template, MACHINE, env={})


def test_template_runtime_errors_are_job_errors() -> None:
    with pytest.raises(JobError, match="ZeroDivisionError"):
        render_job("a: 1\nb: {{ 1 / 0 }}\n", env={})


def test_parse_without_machine_uses_placeholders() -> None:
    text = MINIMAL.replace("console=ttyS0", "console={{ local_tty_device }} id={{ machine_id }}")
    job = Job.parse(text, env={}, now=NOW)
    assert job.deployment_for_boot(0).cmdline == "console=ttyS0 id=00:00:00:00:00:00"


def test_templated_job_renders_for_a_machine() -> None:
    env = {
        "EXECUTOR_JOB__GPU_TAG": "amdgpu:codename:NAVI21",
        "EXECUTOR_JOB__REGISTRY": "ci-gateway:8002",
        "MINIO_URL": "http://10.42.0.1:9000",
    }
    variables = {
        "overall_minutes": 30,
        "boot_retries": 2,
        "session_end": "^DONE\\r$",
        "deadline": "2099-01-01 00:00:00",
    }
    job = Job.parse(TEMPLATED, MACHINE, env, variables=variables, now=NOW)
    assert job.target.tags == ["amdgpu:codename:NAVI21"]
    assert job.deadline == datetime(2099, 1, 1, tzinfo=timezone.utc)
    assert job.timeouts.overall.duration == timedelta(minutes=30)
    assert job.timeouts.first_console_activity.retries == 2
    boot = job.deployment_for_boot(0)
    assert boot.kernel_url == "http://10.42.0.1:9000/boot/kernel"
    assert "console=ttyS1,115200 SALAD.machine_id=52:54:00:11:22:04" in boot.cmdline
    assert boot.cmdline.endswith("valve.tag=amdgpu:gfxversion:gfx10 valve.tag=amdgpu:codename:NAVI21")
    # valve-infra parsed the unrendered YAML first, which fails on this job (§13.12)
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(TEMPLATED)


# ------------------------------------------------------------------------------------------ peek_target


def test_peek_target_with_jinja_outside_quotes() -> None:
    target = peek_target(TEMPLATED, env={"EXECUTOR_JOB__GPU_TAG": "amdgpu:codename:NAVI21"})
    assert target == Target(tags=["amdgpu:codename:NAVI21"])


def test_peek_target_needs_no_machine_variables() -> None:
    text = (
        "target:\n  id: '52:54:00:11:22:33'\n{% if machine_tags %}\nextra: {{ machine_tags[0] }}\n{% endif %}\n"
        "console_patterns: {{ machine.base_name }}\n"
    )
    assert peek_target(text, env={}).id == "52:54:00:11:22:33"


def test_peek_target_falls_back_to_the_target_block() -> None:
    # the lenient render fails (Undefined + list), so the target block is cut out of the raw text
    text = (
        "# job\nversion: 1\ntarget:\n  tags:\n    - gfx9   # comment\n\n    - virtio\n"
        "deployment: {{ machine_tags + ['x'] }}\n"
    )
    assert peek_target(text, env={}).tags == ["gfx9", "virtio"]


def test_peek_target_with_a_metadata_override_in_parse() -> None:
    job = Job.parse(MINIMAL, env={}, target=Target(id="aa:bb:cc:dd:ee:ff"), now=NOW)
    assert job.target.id == "aa:bb:cc:dd:ee:ff" and job.target.tags == []
    job = Job.parse(_with("target:\n  tags: []\n", ""), env={}, target=Target(tags=["x"]), now=NOW)
    assert job.target.tags == ["x"]


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("version: 1\ntarget:\n  idd: x\n", 3, "target.idd"),
        ("version: 1\ntarget: {}\n", 2, "target"),
        ("version: 1\ndeployment: {}\n", 1, "target"),
        ("version: 1\ntarget:\n  tags: [a, {a: b}]\n", 3, "target.tags[1]"),
    ],
)
def test_peek_target_errors(text: str, line: int, field: str) -> None:
    with pytest.raises(JobError) as info:
        peek_target(text, env={})
    assert (info.value.line, info.value.field) == (line, field)


# ------------------------------------------------------------------------------------------ deadline


def test_deadline_is_enforced() -> None:
    text = _with("version: 1\n", "version: 1\ndeadline: 2024-06-01T13:00:00Z\n")
    job = load(text)
    assert not job.deadline_expired(NOW)
    assert job.deadline_expired(NOW + timedelta(hours=1))
    with pytest.raises(JobError) as info:
        job.check_deadline(NOW + timedelta(hours=2))
    assert (info.value.line, info.value.field) == (2, "deadline")
    with pytest.raises(JobError, match="has passed"):
        load(text, now=NOW + timedelta(hours=1, seconds=1))
    assert load(text, now=NOW + timedelta(days=1), enforce_deadline=False).deadline is not None


def test_deadline_naive_and_date_forms_are_utc() -> None:
    job = load(_with("version: 1\n", "version: 1\ndeadline: 2030-01-02\n"))
    assert job.deadline == datetime(2030, 1, 2, tzinfo=timezone.utc)
    job = load(_with("version: 1\n", "version: 1\ndeadline: 2030-01-02T10:00:00+02:00\n"))
    assert job.deadline == datetime(2030, 1, 2, 8, tzinfo=timezone.utc)


def test_deadline_becomes_a_timeout_that_never_retries() -> None:
    job = load(_with("version: 1\n", "version: 1\ndeadline: 2024-06-01T12:10:00Z\n"))
    clock = FakeClock()
    timeouts = job.make_timeouts(clock=clock, now=NOW)
    assert timeouts.deadline is not None and timeouts.deadline.is_started
    clock.advance(599)
    assert timeouts.expired() == []
    clock.advance(1)
    assert timeouts.expired() == [timeouts.deadline]
    assert timeouts.deadline.retry() is False
    assert load(MINIMAL).make_timeouts(clock=clock).deadline is None


# ------------------------------------------------------------------------------------------ timeouts


def test_timeout_expiry_with_a_fake_clock() -> None:
    clock = FakeClock()
    t = Timeout("boot_cycle", timedelta(seconds=10), retries=2, clock=clock)
    assert not t.is_started and not t.has_expired() and t.remaining() is None
    t.start()
    clock.advance(9.5)
    assert not t.has_expired() and t.elapsed() == pytest.approx(9.5) and t.remaining() == pytest.approx(0.5)
    clock.advance(0.5)
    assert t.has_expired()
    t.reset()  # re-base
    assert not t.has_expired()
    clock.advance(10)
    assert t.has_expired()
    t.stop()
    assert not t.has_expired() and not t.is_started
    t.reset(clock() - 20)  # re-base in the past also starts it
    assert t.has_expired()
    assert t.has_expired(now=clock() - 15) is False


def test_timeout_retry_budget() -> None:
    t = Timeout("first_console_activity", 5.0, retries=2, clock=FakeClock())
    assert t.can_retry
    assert t.retry() is True and t.retry() is True
    assert not t.can_retry
    assert t.retry() is False and t.retried == 3


def test_unlimited_timeout_never_expires() -> None:
    clock = FakeClock()
    t = Timeout("infra_setup", None, clock=clock)
    t.start()
    clock.advance(10**9)
    assert not t.has_expired() and t.remaining() is None
    assert t.retry() is False


def test_overall_never_retries() -> None:
    spec = TimeoutsSpec.model_validate({"overall": {"seconds": 5}})
    clock = FakeClock()
    timeouts = Timeouts(spec, clock=clock)
    assert timeouts.overall.retries == 0 and not timeouts.overall.can_retry
    assert timeouts.overall.retry() is False
    forced = Timeout("overall", 5.0, retries=3, clock=clock, retryable=False)
    assert forced.retries == 0 and forced.retry() is False


def test_timeouts_collection() -> None:
    spec = TimeoutsSpec.model_validate(
        {
            "overall": {"minutes": 10},
            "boot_cycle": {"minutes": 2, "retries": 1},
            "first_console_activity": {"seconds": 30},
            "console_activity": {"seconds": 20},
            "watchdogs": {"wd": {"seconds": 5}},
        }
    )
    clock = FakeClock()
    timeouts = Timeouts(spec, clock=clock)
    names = [t.name for t in timeouts]
    assert names == [
        "overall",
        "infra_setup",
        "infra_teardown",
        "boot_cycle",
        "first_console_activity",
        "console_activity",
        "watchdogs.wd",
    ]
    assert timeouts.get("watchdogs.wd") is timeouts.watchdogs["wd"]
    with pytest.raises(KeyError):
        timeouts.get("nope")
    timeouts.overall.start()
    timeouts.console_activity.start()
    timeouts.watchdogs["wd"].start()
    timeouts.start_boot()
    assert timeouts.boot_cycle.is_started and timeouts.first_console_activity.is_started
    assert not timeouts.console_activity.is_started and not timeouts.watchdogs["wd"].is_started
    clock.advance(31)
    assert [t.name for t in timeouts.expired()] == ["first_console_activity"]
    clock.advance(100)
    assert [t.name for t in timeouts.expired()] == ["boot_cycle", "first_console_activity"]
    clock.advance(500)
    assert [t.name for t in timeouts.expired()] == ["overall", "boot_cycle", "first_console_activity"]
    timeouts.stop_boot()
    assert [t.name for t in timeouts.expired()] == ["overall"]


# ------------------------------------------------------------------------------------------ watchdogs

WATCHDOG_PATTERNS = """\
console_patterns:
  session_end:
    regex: '^END$'
  watchdogs:
    wd:
      start: {regex: '^START'}
      reset: {regex: '^PING'}
      stop: {regex: '^STOP'}
"""
WATCHDOG_TIMEOUTS = "timeouts:\n  watchdogs:\n    wd:\n      seconds: 10\n      retries: 1\n"


def test_watchdog_transitions() -> None:
    _, timeouts, console, clock = console_for(WATCHDOG_PATTERNS, timeouts_yaml=WATCHDOG_TIMEOUTS)
    wd = console.watchdogs["wd"]
    assert wd.timeout is timeouts.watchdogs["wd"]
    console.start_boot()
    assert console.feed(b"PING\nSTOP\n") == []  # stopped: only start counts
    assert not wd.running
    assert console.feed(b"START the tests\n") == [LineMatch(b"START the tests\n", ("wd.start",))]
    assert wd.running
    clock.advance(8)
    assert console.feed(b"START again\n") == []  # running: start is not looked at
    assert [m.patterns for m in console.feed(b"PING 1\n")] == [("wd.reset",)]
    assert timeouts.watchdogs["wd"].started_at == clock()
    clock.advance(9)
    assert timeouts.expired() == []
    clock.advance(1)
    assert timeouts.expired() == [timeouts.watchdogs["wd"]]
    assert timeouts.watchdogs["wd"].retry() is True
    assert [m.patterns for m in console.feed(b"STOP\n")] == [("wd.stop",)]
    assert not wd.running and timeouts.expired() == []
    console.feed(b"START\n")
    console.start_boot()  # a new boot stops every watchdog
    assert not wd.running


def test_watchdog_reset_wins_over_stop_on_the_same_line() -> None:
    patterns = WATCHDOG_PATTERNS.replace("'^STOP'", "'^PING STOP'")
    _, _, console, _ = console_for(patterns, timeouts_yaml=WATCHDOG_TIMEOUTS)
    console.start_boot()
    console.feed(b"START\n")
    assert console.feed(b"PING STOP\n")[0].patterns == ("wd.reset",)
    assert console.watchdogs["wd"].running


# ------------------------------------------------------------------------------------------ JobConsole

B2C_PATTERNS = """\
console_patterns:
  session_end:
    regex: '^.*It''s now safe to turn off your computer\\r$'
  session_reboot:
    regex: '^REBOOT$'
  job_success:
    regex: '^.*Execution is over, pipeline status: 0\\r$'
  job_warn:
    regex: '^.*WARN\\r?$'
  machine_unfit_for_service:
    regex: '^.*GPU hang'
"""
END = b"[  OK  ] It's now safe to turn off your computer\r\n"
SUCCESS = b"+ b2c: Execution is over, pipeline status: 0\r\n"
FAILURE = b"+ b2c: Execution is over, pipeline status: 1\r\n"


def test_status_incomplete_without_session_end() -> None:
    _, _, console, _ = console_for(B2C_PATTERNS)
    console.start_boot()
    console.feed(SUCCESS)
    assert console.job_status is JobStatus.INCOMPLETE
    assert console.state is JobConsoleState.ACTIVE and not console.session_ended


@pytest.mark.parametrize(
    ("lines", "status"),
    [
        ([SUCCESS, END], JobStatus.PASS),
        ([b"WARN\r\n", SUCCESS, END], JobStatus.WARN),
        ([b"WARN\r\n", FAILURE, END], JobStatus.FAIL),
        ([FAILURE, END], JobStatus.FAIL),
    ],
)
def test_status_with_job_success(lines: list[bytes], status: JobStatus) -> None:
    _, _, console, _ = console_for(B2C_PATTERNS)
    console.start_boot()
    for line in lines:
        console.feed(line)
    assert console.job_status is status
    assert console.state is JobConsoleState.DUT_DONE


def test_status_complete_without_job_success() -> None:
    _, _, console, _ = console_for("console_patterns:\n  session_end:\n    regex: '^END\\r?$'\n")
    console.start_boot()
    console.feed(b"hello\r\nEND\r\n")
    assert console.job_status is JobStatus.COMPLETE


def test_lines_split_across_chunks_and_crlf() -> None:
    _, _, console, _ = console_for(B2C_PATTERNS)
    console.start_boot()
    data = SUCCESS + END
    matches = []
    for i in range(len(data)):
        matches += console.feed(data[i : i + 1])
    assert [m.patterns for m in matches] == [("job_success",), ("session_end",)]
    assert matches[0].line == SUCCESS  # the line keeps its \r\n
    assert matches[0].message == "Matched the following patterns: job_success"
    assert console.job_status is JobStatus.PASS and console.lines == 2


def test_several_patterns_on_one_line() -> None:
    patterns = B2C_PATTERNS.replace("'^REBOOT$'", "'pipeline status'")
    _, _, console, _ = console_for(patterns)
    console.start_boot()
    [match] = console.feed(SUCCESS)
    assert match.patterns == ("session_reboot", "job_success")
    assert match.message == "Matched the following patterns: session_reboot, job_success"
    assert console.matched == {"session_reboot": 1, "job_success": 1}


def test_session_reboot_is_per_boot() -> None:
    _, _, console, _ = console_for(B2C_PATTERNS)
    console.start_boot()
    assert [m.patterns for m in console.feed(b"REBOOT\n")] == [("session_reboot",)]
    assert console.needs_reboot and not console.session_ended
    console.start_boot()
    assert not console.needs_reboot and console.boot == 2
    console.feed(SUCCESS + END)
    assert console.job_status is JobStatus.PASS


def test_unfit_for_service_only_when_matched() -> None:
    _, _, console, _ = console_for(B2C_PATTERNS)
    assert console.patterns.machine_unfit_for_service is not None  # defined...
    console.start_boot()
    console.feed(SUCCESS + END)
    assert console.unfit_for_service is False  # ...but not matched: the machine stays in service (§13.1)

    _, _, console, _ = console_for(B2C_PATTERNS)
    console.start_boot()
    [match] = console.feed(b"[  12.0] amdgpu: GPU hang detected\r\n")
    assert match.patterns == ("machine_unfit_for_service",)
    assert console.unfit_for_service is True
    assert console.session_ended and console.state is JobConsoleState.DUT_DONE  # it ends the session
    assert console.job_status is JobStatus.INCOMPLETE


def test_console_state_is_monotonic_and_skips_to_over_without_client() -> None:
    _, _, console, _ = console_for(B2C_PATTERNS)
    assert console.state is JobConsoleState.CREATED
    console.start_boot()
    console.feed(b"x")
    assert console.state is JobConsoleState.ACTIVE
    console.feed(END)
    assert console.state is JobConsoleState.DUT_DONE
    assert console.advance(JobConsoleState.ACTIVE) is False and console.state is JobConsoleState.DUT_DONE
    assert console.tear_down() and console.state is JobConsoleState.TEAR_DOWN
    assert console.feed(SUCCESS) == []  # nothing is matched once torn down
    assert console.close() and console.state is JobConsoleState.OVER
    assert console.close() is False

    _, _, training, _ = console_for(B2C_PATTERNS, has_client=False)
    training.start_boot()
    training.feed(END)
    assert training.state is JobConsoleState.OVER


def test_eof_matches_the_partial_line_and_ends_the_session() -> None:
    _, _, console, _ = console_for("console_patterns:\n  session_end:\n    regex: '^END$'\n")
    console.start_boot()
    assert console.feed(b"line\nEND") == []
    assert [m.patterns for m in console.eof()] == [("session_end",)]
    assert console.state is JobConsoleState.DUT_DONE and console.job_status is JobStatus.COMPLETE


def test_eof_without_session_end_is_incomplete() -> None:
    _, _, console, _ = console_for(B2C_PATTERNS)
    console.start_boot()
    console.feed(b"kernel panic")
    assert console.eof() == []
    assert console.session_ended and console.job_status is JobStatus.INCOMPLETE


def test_a_one_megabyte_line_is_bounded() -> None:
    _, _, console, _ = console_for(B2C_PATTERNS, max_line_length=4096)
    console.start_boot()
    chunk = b"x" * 65536
    for _ in range(16):  # 1 MiB without a newline
        assert console.feed(chunk) == []
        assert len(console._buffer) <= 4096
    assert console.feed(b"\n") == []
    assert console.truncated_lines == 1 and console.lines == 1
    assert console.feed(SUCCESS + END)[-1].patterns == ("session_end",)
    assert console.job_status is JobStatus.PASS and console.bytes_received == 2**20 + 1 + len(SUCCESS + END)


def test_a_new_boot_drops_the_partial_line() -> None:
    _, _, console, _ = console_for("console_patterns:\n  session_end:\n    regex: '^END$'\n")
    console.start_boot()
    console.feed(b"garbage E")
    console.start_boot()
    assert [m.patterns for m in console.feed(b"ND\nEND\n")] == [("session_end",)]


def test_console_activity_drives_the_activity_timeouts() -> None:
    timeouts_yaml = "timeouts:\n  first_console_activity:\n    seconds: 30\n  console_activity:\n    seconds: 10\n"
    _, timeouts, console, clock = console_for(B2C_PATTERNS, timeouts_yaml=timeouts_yaml)
    console.start_boot()
    assert timeouts.first_console_activity.is_started and not timeouts.console_activity.is_started
    clock.advance(5)
    console.feed(b"no newline yet")
    assert console.last_activity_at == clock() and console.first_activity_at is None
    assert timeouts.first_console_activity.is_started and not timeouts.console_activity.is_started
    clock.advance(5)
    console.feed(b" now\n")
    assert console.first_activity_at == clock()
    assert not timeouts.first_console_activity.is_started
    assert timeouts.console_activity.started_at == clock()
    clock.advance(8)
    console.feed(b"more")
    assert timeouts.console_activity.started_at == clock()
    clock.advance(10)
    assert timeouts.expired() == [timeouts.console_activity]
    console.start_boot()  # per boot again
    assert console.first_activity_at is None and timeouts.first_console_activity.is_started
    assert not timeouts.console_activity.is_started


def test_console_without_timeouts() -> None:
    patterns = ConsolePatterns.model_validate(yaml.safe_load(WATCHDOG_PATTERNS)["console_patterns"])
    console = JobConsole(patterns, clock=FakeClock())
    console.start_boot()
    assert console.feed(b"START\n")[0].patterns == ("wd.start",)
    assert console.watchdogs["wd"].running


# ------------------------------------------------------------------------------------------ JobStatus


def test_job_status_values_and_from_str() -> None:
    assert [(s.name, int(s)) for s in JobStatus] == [
        ("PASS", 0),
        ("WARN", 1),
        ("COMPLETE", 2),
        ("FAIL", 3),
        ("INCOMPLETE", 4),
        ("UNKNOWN", 5),
        ("SETUP_FAIL", 6),
    ]
    assert JobStatus.from_str("PASS") is JobStatus.PASS
    assert JobStatus.from_str("setup_fail") is JobStatus.SETUP_FAIL
    assert JobStatus.from_str(" warn ") is JobStatus.WARN
    assert JobStatus.from_str("BOGUS") is JobStatus.UNKNOWN
    assert JobStatus.from_str("") is JobStatus.UNKNOWN


# ------------------------------------------------------------------------------------------ built-in jobs

KERNEL = "http://10.42.0.1:8000/files/kernel"
INITRD = "http://10.42.0.1:8000/files/b2c.cpio.xz"


def test_builtin_register_job() -> None:
    job = builtin_job("register", MACHINE, default_kernel_url=KERNEL, default_initramfs_url=INITRD, env={}, now=NOW)
    assert job.target.id == MACHINE.mac_address
    assert job.timeouts.overall.duration == timedelta(minutes=5)
    assert job.console_patterns.session_end.regex == "^MaRS: Registration .*$"
    assert job.console_patterns.job_success.regex == "^MaRS: Registration complete$"
    boot = job.deployment_for_boot(0)
    assert (boot.kernel_url, boot.initrd_url) == (KERNEL, INITRD)
    assert boot.cmdline.endswith("console=ttyS1,115200 SALAD.machine_id=52:54:00:11:22:04")
    assert "machine_registration:latest -m ci-gateway register" in boot.cmdline
    assert "b2c.cache_device=auto" in boot.cmdline
    console = job.make_console(has_client=False)
    console.start_boot()
    console.feed(b"MaRS: Registration complete\n")
    assert console.job_status is JobStatus.PASS and console.state is JobConsoleState.OVER
    console = job.make_console(has_client=False)
    console.start_boot()
    console.feed(b"MaRS: Registration failed\n")
    assert console.job_status is JobStatus.FAIL


def test_builtin_bootloop_job() -> None:
    job = builtin_job(
        "bootloop",
        MACHINE,
        default_kernel_url=KERNEL,
        default_initramfs_url=INITRD,
        env={"EXECUTOR_JOB__NTP_PEER": "10.42.0.1"},
        variables={"mars_host": "10.42.0.1:8000", "registration_image": "docker://10.42.0.1:8002/reg:1"},
        now=NOW,
    )
    t = job.timeouts
    assert (t.first_console_activity.duration, t.first_console_activity.retries) == (timedelta(minutes=2), 0)
    assert t.overall.duration == timedelta(minutes=3)
    p = job.console_patterns
    assert p.session_end.regex == r"^.*It's now safe to turn off your computer\r$"
    assert p.job_success.regex == r"^.*Execution is over, pipeline status: 0\r$"
    assert p.job_warn.regex == "^The configured console is not connected to SALAD$"
    cmdline = job.deployment_for_boot(0).cmdline
    assert 'b2c.container="-ti --tls-verify=false docker://10.42.0.1:8002/reg:1 -m 10.42.0.1:8000 check"' in cmdline
    assert "b2c.ntp_peer=10.42.0.1 " in cmdline
    assert "earlyprintk=vga,keep console=ttyS1,115200 SALAD.machine_id=52:54:00:11:22:04" in cmdline
    console = job.make_console(has_client=False)
    console.start_boot()
    console.feed(b"No differences found!\r\n" + SUCCESS + END)
    assert console.job_status is JobStatus.PASS
    console = job.make_console(has_client=False)
    console.start_boot()
    console.feed(b"The configured console is not connected to SALAD\n" + SUCCESS + END)
    assert console.job_status is JobStatus.WARN


def test_builtin_job_without_tty_and_unknown_name() -> None:
    bare = MachineInfo(mac_address="aa:bb:cc:dd:ee:ff")
    job = builtin_job("register", bare, default_kernel_url=KERNEL, default_initramfs_url=INITRD, env={}, now=NOW)
    cmdline = job.deployment_for_boot(0).cmdline
    assert "console=" not in cmdline and cmdline.endswith(" SALAD.machine_id=aa:bb:cc:dd:ee:ff")
    assert set(BUILTIN_TEMPLATES) == {"register", "bootloop"}
    with pytest.raises(ValueError, match="no built-in job"):
        builtin_job("cache_reset", bare, default_kernel_url=KERNEL, default_initramfs_url=INITRD, env={})
