"""The files that deploy tracecap say the same as the code and as each other: the default
configuration parses and sets the disk budget the README states, the systemd unit makes the run
directory as set-up does and may write where the deployment writes, the static supervisord.conf
rotates its logs as `tracecap run`'s does, and the README's command synopsis is the usage."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

from tests.support import unit_sandbox
from tracecap import cli, options
from tracecap.frontend import plan, supervisor_conf

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf" / "tracecap.conf"
UNIT = ROOT / "packaging" / "tracecap.service"
SETUP = ROOT / "scripts" / "setup.sh"
README = (ROOT / "README.md").read_text()


def default_config() -> options.Config:
    return options.parse_args(cli.expand_config({"--config": [str(CONF)]}, []))


def readme_section(heading: str) -> str:
    start = README.index(f"\n{heading}\n")
    end = README.find("\n#", start + len(heading) + 2)
    return README[start:end]


def test_the_default_configuration_parses_and_sets_a_disk_budget() -> None:
    config = default_config()
    assert config.limit_bytes == 2 << 30
    assert config.floor_bytes == 1 << 30
    assert config.floor_bytes > options.DEFAULT_FLOOR_BYTES
    assert config.dir == options.DEFAULT_DIR
    assert config.kinds() == ("write", "exec", "mem", "module", "bpf")
    assert config.output == "none"


def test_the_readme_states_the_budget_of_the_default_configuration() -> None:
    tokens = options.expand_config_file(CONF.read_text())
    budget = [t for t in tokens if t.startswith(("limit:", "floor:"))]
    assert len(budget) == 2, budget
    section = readme_section("### The default configuration and its disk budget")
    for token in budget:
        assert f"`{token}`" in section, token


def test_the_readme_command_line_is_the_usage() -> None:
    block = re.search(r"```\n(.*?)```", readme_section("## Command line"), re.S)
    assert block is not None
    assert block[1] == cli.USAGE.split("\n\ncommands:")[0] + "\n"


def unit_settings() -> dict[str, list[str]]:
    return unit_sandbox.service_section(UNIT.read_text())


def test_the_unit_makes_the_run_directory_as_setup_does() -> None:
    setup = SETUP.read_text()
    for command in unit_settings()["ExecStartPre"]:
        assert command.startswith("+/usr/bin/install -d ")  # outside the sandbox
        assert command.removeprefix("+/usr/bin/") in setup, command
        assert shlex.split(command)[-1].startswith(cli.DEFAULT_RUN_DIR)


def test_the_unit_runs_the_installed_static_deployment_and_may_write_where_it_writes() -> None:
    settings = unit_settings()
    argv = shlex.split(settings["ExecStart"][0])
    assert argv[:2] == ["/usr/local/bin/supervisord", "--nodaemon"]
    conf = argv[argv.index("-c") + 1]
    assert f"install_conf supervisord.conf {conf}" in SETUP.read_text()
    writable = {p for value in settings["ReadWritePaths"] for p in value.split()}
    assert writable == {default_config().dir, cli.DEFAULT_RUN_DIR}
    assert settings["Environment"] == [f"TMPDIR={cli.DEFAULT_RUN_DIR}"]
    assert settings["Nice"] == ["-10"]
    assert settings["KillMode"] == ["mixed"]
    assert settings["Restart"] == ["on-failure"]


def test_the_unit_has_only_directives_the_end_to_end_sandbox_builds() -> None:
    unit_sandbox.spec_of(UNIT)  # raises for a [Service] directive it cannot emulate


def test_the_readme_lists_the_units_capabilities() -> None:
    bounding = unit_settings()["CapabilityBoundingSet"][-1]
    assert f"`CapabilityBoundingSet={bounding}`" in readme_section("### As a systemd service")


def test_the_static_deployment_restarts_writers_as_tracecap_run_does() -> None:
    """Any exit restarts a writer but a refusal of its configuration, which would recur."""
    static = configparser.RawConfigParser()
    static.read(ROOT / "supervisord.conf")
    planned = plan.programs(options.parse_args(["--capture", "write"]), "/run/x", exe="tracecap")
    want = next(p for p in planned if p.name == "writer-file")
    writers = [s for s in static.sections() if s.startswith("program:writer-")]
    assert len(writers) >= 6
    for section in writers:
        got = (static[section]["autorestart"], static[section]["exitcodes"])
        assert got == (want.autorestart, want.exitcodes), section


def test_the_static_deployment_rotates_its_logs_as_tracecap_run_does() -> None:
    rendered = configparser.RawConfigParser()
    argv = ("tracecap", "writer", "file")
    program = supervisor_conf.Program("writer-file", argv, "tracecap", 10, "unexpected")
    rendered.read_string(supervisor_conf.render("/run/x", [program]))
    static = configparser.RawConfigParser()
    static.read(ROOT / "supervisord.conf")
    want = rendered["program:writer-file"]
    assert static["supervisord"]["logfile_maxbytes"] == rendered["supervisord"]["logfile_maxbytes"]
    for section in static.sections():
        if section.startswith("program:"):
            for key in ("stdout_logfile_maxbytes", "stdout_logfile_backups"):
                assert static[section][key] == want[key], (section, key)
