"""The lab Neutron server's configuration, without starting it (calico.lab.neutron)."""

from __future__ import annotations

import configparser
import importlib
import importlib.util
from pathlib import Path
from typing import Any

import neutron

from calico.lab.neutron import DEFAULT_SG_RULE_TEMPLATES, NeutronServer

MIGRATION = "db/migration/alembic_migrations/versions/2023.2/expand/c33da356b165_security_group_default_rules.py"  # noqa: E501


def test_quota_driver_makes_no_reservations(tmp_path: Path) -> None:
    """No quota reservation (a write after the resource's commit, which sqlite may refuse
    with a 500 for a resource that exists): the null driver, which must exist."""
    NeutronServer(tmp_path, etcd_port=2379)._write_config()
    conf = configparser.ConfigParser()
    conf.read(tmp_path / "etc" / "neutron.conf")
    module, _, name = conf["quotas"]["quota_driver"].rpartition(".")
    assert name == "DbQuotaDriverNull"
    assert getattr(importlib.import_module(module), name)


def test_default_sg_rule_templates_are_the_migrations() -> None:
    """The templates the lab adds are those Neutron's migration inserts (the lab skips
    migrations), so new security groups get the rules a real Neutron gives them."""
    path = Path(neutron.__file__).parent / MIGRATION
    spec = importlib.util.spec_from_file_location("sg_default_rules_migration", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)

    def key(rule: dict[str, Any]) -> tuple[Any, ...]:
        return (
            rule["direction"],
            rule["ethertype"],
            rule.get("remote_group_id"),
            rule.get("used_in_default_sg", True),  # the lab sets it on every template
            rule["used_in_non_default_sg"],
        )

    assert sorted(map(key, DEFAULT_SG_RULE_TEMPLATES)) == sorted(
        map(key, migration.default_template_rules)
    )
