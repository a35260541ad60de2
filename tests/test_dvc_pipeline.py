"""Pipeline tier: ``dvc.yaml`` wiring, and ``dvc repro`` end to end on a copy of the repository.

The end-to-end test copies the code, ``params.yaml`` (made tiny: 64 px, 1 epoch, small backbone,
8 training photos) and the sample into a temporary git repository, runs ``dvc repro`` twice
(the second run must do nothing), then checks that a parameter change, a new unlabelled photo and
a new Label Studio photo each re-run exactly the stages that depend on them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cardamage.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]
STAGES = ["backbone", "prepare", "train", "evaluate", "score", "drift", "report"]
#: The module each stage's command runs; it must be among the stage's deps.
MODULE = {"backbone": "backbone_import", "prepare": "prepare", "train": "train", "evaluate": "evaluate", "score": "scoring", "drift": "drift",
          "report": "report"}
VAR = re.compile(r"\$\{([^}]+)\}")


def _dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))


def _lookup(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def _names(entries) -> list[str]:
    """Paths of a deps/outs/metrics/plots list (plain strings or one-key mappings)."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def test_one_stage_per_step_in_order():
    assert list(_dvc_yaml()["stages"]) == STAGES


def test_every_interpolated_value_is_in_params_yaml():
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    lines = (REPO / "dvc.yaml").read_text(encoding="utf-8").splitlines()
    for ref in set(VAR.findall("\n".join(x for x in lines if not x.lstrip().startswith("#")))):
        try:
            value = _lookup(params, ref)
        except (KeyError, TypeError):
            pytest.fail(f"dvc.yaml uses ${{{ref}}} but params.yaml has no {ref}")
        assert isinstance(value, str), ref


def test_params_name_existing_keys_and_deps_name_the_stage_module():
    schema = dataclasses.asdict(Params())
    for name, stage in _dvc_yaml()["stages"].items():
        for key in stage.get("params", []):
            _lookup(schema, key)  # KeyError names an unknown parameter
        deps = _names(stage["deps"])
        assert f"cardamage/{MODULE[name]}.py" in deps, name
        assert stage["cmd"].startswith(f"cardamage {name}"), name
        for dep in deps:
            if dep.startswith("cardamage/"):
                assert (REPO / dep).is_file(), dep


def test_metrics_and_plots_are_declared():
    stages = _dvc_yaml()["stages"]
    metrics = [m for s in stages.values() for m in _names(s.get("metrics"))]
    plots = [p for s in stages.values() for p in _names(s.get("plots"))]
    assert {"${evaluate.metrics_file}", "${drift.summary}", "${prepare.summary}"} <= set(metrics)
    assert "${train.history_csv}" in plots and "${evaluate.plots_dir}/pr_curve.png" in plots
    assert "${train.model_path}" in _names(stages["train"]["outs"])
    assert "${drift.html}" in _names(stages["drift"]["outs"])
    assert "${report.out_file}" in _names(stages["report"]["outs"])


# ----------------------------------------------------------------------------- end to end

def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 1200) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _tiny_params(src: Path, dst: Path) -> None:
    """The repo's params (missing sections filled with defaults), shrunk for a minute-long run."""
    p = dataclasses.asdict(load_params(src))
    p["model"].update(backbone="mobilenetv3_small", width=0.5, input_size=64, head_filters=16, projection_filters=8)
    p["train"].update(epochs=1, batch_size=4, max_images=8)
    p["evaluate"].update(overlay_count=2)
    p["score"].update(mc_samples=2)
    dst.write_text(yaml.safe_dump(p, sort_keys=False), encoding="utf-8")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    """A fresh git + DVC repository holding a copy of the project; ``dvc repro`` already run once."""
    if not Path(_bin("dvc")).is_file():
        pytest.skip("dvc is not installed in this environment (pip install 'dvc>=3')")
    root = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(REPO / "cardamage", root / "cardamage", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "data" / "sample", root / "data" / "sample")
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "setup.py"):
        if (REPO / name).is_file():
            shutil.copy(REPO / name, root / name)
    (root / "data" / "labelled").mkdir(parents=True)
    (root / "data" / "labelled" / ".gitkeep").touch()
    _tiny_params(REPO / "params.yaml", root / "params.yaml")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(root), "DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}
    _run(["git", "init", "-q"], root, env)
    _run([_bin("dvc"), "init", "-q"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "fresh clone"], root, env)
    first = _run([_bin("dvc"), "repro"], root, env)
    return {"root": root, "env": env, "first": first}


@pytest.mark.slow
def test_repro_from_a_fresh_clone_runs_every_stage_then_nothing(project):
    root, env = project["root"], project["env"]
    assert _ran(project["first"]) == set(STAGES)
    for out in ("models/model.keras", "reports/metrics.json", "reports/drift.html", "reports/drift_summary.json",
                "reports/index.html", "reports/scores.parquet", "data/prepared/manifest.csv"):
        assert (root / out).is_file(), out
    assert "report: reports/index.html" in project["first"], "the report stage prints its summary"
    second = _run([_bin("dvc"), "repro"], root, env)
    assert _ran(second) == set() and "up to date" in second
    shown = subprocess.run([_bin("dvc"), "metrics", "show", "--json"], cwd=root, env=env, capture_output=True,
                           text=True, timeout=300).stdout
    json.loads(shown)
    assert "mean_iou" in shown and "drift_detected" in shown and "n_train" in shown
    _run([_bin("dvc"), "plots", "show", "-o", str(root / "dvc_plots")], root, env)
    assert (root / "dvc_plots" / "index.html").is_file()


@pytest.mark.slow
def test_a_param_change_reruns_only_its_stage_and_the_ones_after(project):
    root, env = project["root"], project["env"]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["drift"]["stattest_threshold"] = 0.02
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = _run([_bin("dvc"), "status"], root, env)
    assert "drift:" in status and "train:" not in status and "prepare:" not in status
    assert _ran(_run([_bin("dvc"), "repro"], root, env)) == {"drift", "report"}


@pytest.mark.slow
def test_a_new_pool_photo_skips_training(project):
    root, env = project["root"], project["env"]
    shutil.copy(root / "data" / "sample" / "val" / "1.jpg", root / "data" / "sample" / "test" / "new.jpg")
    ran = _ran(_run([_bin("dvc"), "repro"], root, env))
    # prepare re-runs (data/sample changed) but writes the same bytes, so train and evaluate are skipped
    assert ran == {"prepare", "score", "drift", "report"}


@pytest.mark.slow
def test_pulled_labels_rerun_prepare_and_everything_downstream(project):
    root, env = project["root"], project["env"]
    labelled = root / "data" / "labelled"
    (labelled / "images").mkdir(exist_ok=True)
    shutil.copy(root / "data" / "sample" / "test" / "11.jpg", labelled / "images" / "11.jpg")
    size = (labelled / "images" / "11.jpg").stat().st_size
    square = {"name": "polygon", "all_points_x": [100, 400, 400, 100], "all_points_y": [100, 100, 400, 400]}
    (labelled / "via_region_data.json").write_text(json.dumps({f"images/11.jpg{size}": {
        "filename": "images/11.jpg", "size": size, "file_attributes": {},
        "regions": [{"shape_attributes": square, "region_attributes": {"name": "damage"}}]}}))
    status = _run([_bin("dvc"), "status"], root, env)
    assert "prepare:" in status and "data/labelled" in status and "train:" not in status
    assert _ran(_run([_bin("dvc"), "repro"], root, env)) == set(STAGES) - {"backbone"}
    summary = json.loads((root / "reports" / "prepare_summary.json").read_text())
    assert summary["n_labelled"] == 1
