"""Fixtures of the stress subset: a scenario environment on the test database with a private
Redis port (16450+, apart from `make stress` on 16440 so both can run at once) and private
Sentinel cluster ports (17110-17114, apart from `make stress` on 17100-17104)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stress.base import StressEnv

TEST_REDIS_PORT = 16450
TEST_SENTINEL_PORTS = range(17110, 17115)


@pytest.fixture
def stress_env(tmp_path: Path) -> StressEnv:
    return StressEnv(log_dir=tmp_path, redis_port=TEST_REDIS_PORT, sentinel_ports=TEST_SENTINEL_PORTS)


def assert_held(report: object) -> None:
    """Fail with the scenario's figures and violations, so a red test says what broke."""
    from stress.base import Report

    assert isinstance(report, Report)
    assert report.ok, report.render()
