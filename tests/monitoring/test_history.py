"""Code tier: the model history file (``reports/history.jsonl``): append-only, bad lines skipped by name."""

from __future__ import annotations

import json
import logging

from cardamage.monitoring.history import append_entry, read_entries, rolled_back_versions


def test_entries_are_appended_in_order_and_earlier_lines_kept_byte_for_byte(tmp_path):
    path = tmp_path / "reports" / "history.jsonl"
    append_entry(path, {"model_version": "a", "promoted": True})
    first = path.read_bytes()
    append_entry(path, {"model_version": "b", "promoted": False})
    assert path.read_bytes().startswith(first)
    entries, problems = read_entries(path)
    assert [e["model_version"] for e in entries] == ["a", "b"] and problems == []
    assert read_entries(tmp_path / "absent.jsonl") == ([], [])


def test_a_line_that_is_not_json_is_skipped_and_named(tmp_path, caplog):
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps({"model_version": "a"}) + "\n{cut short\n[1, 2]\n\n")  # no newline at the end next
    append_entry(path, {"model_version": "b"})
    with caplog.at_level(logging.WARNING):
        entries, problems = read_entries(path)
    assert [e["model_version"] for e in entries] == ["a", "b"]
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}:2: not JSON") and problems[1].startswith(f"{path}:3: not a JSON object")
    assert f"{path}:2" in caplog.text
    assert "{cut short" in path.read_text(), "unreadable lines are left as they are"


def test_rolled_back_versions_until_forced_again():
    entries = [{"event": "gate", "model_version": "a", "promoted": True},
               {"event": "rollback", "rolled_back_version": "b", "time": "t1"},
               {"event": "rollback", "rolled_back_version": "c", "time": "t2"},
               {"event": "force", "model_version": "c", "promoted": True}]
    assert rolled_back_versions(entries) == {"b": "t1"}
