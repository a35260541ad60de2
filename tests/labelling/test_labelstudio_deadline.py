"""A server that accepts connections but never answers (or answers a byte at a time): bounded, explained."""

from __future__ import annotations

import logging
import re
import time

import pytest
from ls_fakes import Stub, TarPit

from cardamage.errors import ServiceError
from cardamage.labelling.client import LabelStudioTimeout, connect

KEY = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("mode", ["silent", "drip"])
def test_a_tar_pit_fails_within_the_deadline_and_says_what_it_waits_for(mode, caplog):
    caplog.set_level(logging.INFO)
    with TarPit(mode, drip_s=0.3) as pit:
        client = connect(pit.url, KEY, timeout_s=1.0, max_retries=5, backoff_s=0.1, deadline_s=2.0)
        start, wall = time.monotonic(), time.time()
        with pytest.raises(ServiceError) as info:
            client.whoami()
        waited = time.monotonic() - start
    assert waited < 3.5
    message = str(info.value)
    assert pit.url in message and "whoami" in message
    assert re.search(r"after \d+\.\d s", message)
    notices = [r for r in caplog.records if r.levelno == logging.INFO
               and r.getMessage().startswith(f"waiting for Label Studio at {pit.url}")]
    assert notices and "attempt 1/6" in notices[0].getMessage()
    assert notices[0].created - wall < 1.5  # said before the first attempt had timed out


def test_the_message_names_the_time_waited():
    with TarPit("silent") as pit:
        client = connect(pit.url, KEY, timeout_s=0.5, max_retries=1, backoff_s=0.1, deadline_s=5.0)
        with pytest.raises(ServiceError) as info:
            client.find_project("x")
    assert "project search" in str(info.value) and pit.url in str(info.value)
    waited = float(re.search(r"after (\d+\.\d) s", str(info.value)).group(1))
    assert 1.0 <= waited < 3.0  # 0.5 s, 0.1 s backoff, 0.5 s: two attempts


def test_a_create_that_hits_the_deadline_asks_for_reconciliation():
    with TarPit("drip", drip_s=0.2) as pit:
        client = connect(pit.url, KEY, timeout_s=1.0, max_retries=3, backoff_s=0.1, deadline_s=1.5)
        start = time.monotonic()
        with pytest.raises(LabelStudioTimeout):
            client.import_tasks(1, [{"data": {"image": "x"}}])
        assert time.monotonic() - start < 2.5
        assert pit.connections == 1  # a create is not sent again


def test_the_default_deadline_is_bounded():
    with Stub([(200, {"id": 1, "email": "a@b.c"}, 0)]) as stub:
        client = connect(stub.url, KEY)
    assert 0 < client.deadline_s <= 120
    assert client.timeout_s <= client.deadline_s


def test_cli_tar_pit_fails_in_one_line_naming_the_url(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cardamage.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", KEY)
    with TarPit("silent") as pit:
        monkeypatch.setenv("LABEL_STUDIO_URL", pit.url)
        start = time.monotonic()
        result = CliRunner().invoke(main, ["pull", "--set", "labelstudio.timeout_s=0.5",
                                           "--set", "labelstudio.max_retries=1"])
        waited = time.monotonic() - start
    assert result.exit_code != 0 and waited < 5
    assert f"waiting for Label Studio at {pit.url}" in result.stderr
    assert pit.url in result.stderr.splitlines()[-1] and "Traceback" not in result.output
