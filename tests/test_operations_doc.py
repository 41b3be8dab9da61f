"""docs/operations.md speaks of the project's own commands, keys and metrics: every
`hub` command line in it parses with the hub's own command line, every `./dev`
target exists, every `section.key` it names is a setting, every metric the
shipped alert rules use is one the hub exports, and its links to its own
sections land."""

from __future__ import annotations

import re
import shlex
import typing
from pathlib import Path

import pytest
import yaml

import hub.cli
from hub.metrics import Metrics
from hub.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "operations.md"


def _shell_lines() -> list[str]:
    text = GUIDE.read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _commands(program: str) -> list[list[str]]:
    found = []
    for line in _shell_lines():
        words = shlex.split(line.replace("$(date +%F)", "DATE"))
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            words.pop(0)  # VAR=value before the command
        if words[:1] == [program]:
            found.append(words[1:])
    return found


def test_every_hub_command_in_the_guide_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    for name in dir(hub.cli):
        if name.startswith("cmd_"):
            monkeypatch.setattr(hub.cli, name, lambda args, name=name: ran.append(name) or 0)
    commands = _commands("hub")
    assert {c[0] for c in commands} >= {"backup", "export", "import"}
    for argv in commands:
        assert hub.cli.main(argv) == 0, argv
    assert len(ran) == len(commands)


def test_every_dev_command_in_the_guide_is_a_target_of_dev() -> None:
    dev = (ROOT / "dev").read_text()
    commands = _commands("./dev")
    assert ["test", "tests/multihub"] in commands
    for argv in commands:
        assert re.search(rf"^\s+{argv[0]}\)", dev, flags=re.M), argv
        if argv[0] == "test":
            words = iter(argv[1:])
            for word in words:
                if word == "-m":
                    assert next(words) in ("store",)  # the markers pyproject.toml names
                else:
                    assert word.startswith("-") or (ROOT / word).exists(), word


def test_every_setting_the_guide_names_exists() -> None:
    named = set(re.findall(r"`([a-z_]+)\.([a-z_]+)`", GUIDE.read_text()))
    assert ("dispatcher", "inbox_lease_seconds") in named
    sections = typing.get_type_hints(Settings)
    # (Other dotted names are a file, a document field or a mongosh call.)
    settings = {(section, key) for section, key in named if section in sections}
    assert len(settings) >= 8
    for section, key in settings:
        assert key in sections[section].model_fields, f"{section}.{key}"


def test_the_alert_rules_use_the_hubs_metrics_and_name_runbook_sections() -> None:
    exported = Metrics().render().decode()
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    anchors = _anchors()
    for group in rules["groups"]:
        for rule in group["rules"]:
            for metric in re.findall(r"\bhub_[a-z_]+", rule["expr"]):
                assert re.search(rf"^# TYPE {metric.removesuffix('_bucket')} ", exported, re.M), (
                    metric
                )
            anchor = rule["annotations"]["runbook"].split("#", 1)[1]
            assert anchor in anchors, anchor


def _anchors() -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", GUIDE.read_text(), flags=re.M):
        slug = re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_the_guides_links_to_its_own_sections_land() -> None:
    links = set(re.findall(r"\]\(#([a-z0-9-]+)\)", GUIDE.read_text()))
    assert links and links <= _anchors(), links - _anchors()


def test_every_mongodb_operator_the_code_uses_is_in_the_guides_list() -> None:
    """What a managed MongoDB must support stays true as the code grows."""
    section = GUIDE.read_text().split("## MongoDB: what the hub needs", 1)[1]
    section = section.split("\n## ", 1)[0]
    listed = set(re.findall(r"`(\$[a-zA-Z]+)`", section))
    used: set[str] = set()
    engine = ROOT / "hub" / "store" / "engine"  # the embedded store itself, not a user of one
    for package in ("hub", "scheduler", "bots"):
        for path in (ROOT / package).rglob("*.py"):
            if path.is_relative_to(engine):
                continue
            used.update(re.findall(r"""["'](\$[a-zA-Z]+)["']""", path.read_text()))
    not_operators = {"$ref", "$defs", "$db", "$schema", "$id"}  # JSON Schema, the wire
    missing = used - not_operators - listed
    assert not missing, f"used in the code, not in docs/operations.md: {sorted(missing)}"
