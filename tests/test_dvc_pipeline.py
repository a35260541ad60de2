"""Pipeline tier: ``dvc.yaml`` wiring, and ``dvc repro`` end to end on a copy of the repository.

The end-to-end test copies the code, ``params.yaml`` (made tiny: 64 px, 1 epoch, small backbone,
8 training photos) and the sample into a temporary git repository, runs ``dvc repro`` twice
(the second run must do nothing), then checks that a parameter change, a new unlabelled photo and
a new Label Studio photo each re-run exactly the stages that depend on them.

Each stage depends on the code folders (and top-level modules) its command imports: the import
graph of ``cardamage`` is read here (import statements, and module names in registry strings) and
every module a stage's command can import must lie in one of its deps. A cheap scratch pipeline
(stand-in outputs recorded by ``dvc commit``, no training) checks that ``dvc status`` sees an edit
of such a module.
"""

from __future__ import annotations

import ast
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
STAGES = ["backbone", "prepare", "train", "evaluate", "publish", "score", "select", "drift", "report"]
#: The module each stage's command runs; one of the stage's deps must hold it.
MODULE = {"backbone": "model/backbone_import", "prepare": "data/prepare", "train": "model/train",
          "evaluate": "model/evaluate", "publish": "model/publish", "score": "active/scoring",
          "select": "active/selection", "drift": "monitoring/drift", "report": "monitoring/report"}
#: The function of ``cardamage/cli.py`` behind each stage's command.
COMMAND = {"backbone": "backbone_import", "prepare": "prepare", "train": "train", "evaluate": "evaluate",
           "publish": "publish", "score": "score", "select": "select", "drift": "drift", "report": "report"}
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
        assert _covered(f"cardamage/{MODULE[name]}.py", deps), name
        assert stage["cmd"].startswith(f"cardamage {name}"), name
        for dep in deps:
            if dep.startswith("cardamage/"):
                assert (REPO / dep).exists(), dep


def test_metrics_and_plots_are_declared():
    stages = _dvc_yaml()["stages"]
    metrics = [m for s in stages.values() for m in _names(s.get("metrics"))]
    plots = [p for s in stages.values() for p in _names(s.get("plots"))]
    assert {"${evaluate.metrics_file}", "${drift.summary}", "${prepare.summary}", "${publish.decision}"} <= set(metrics)
    assert "${train.history_csv}" in plots and "${evaluate.plots_dir}/overlays_worst.png" in plots
    # left out when degenerate (every test photo damaged), so not a declared output
    assert "${evaluate.plots_dir}/pr_curve.png" not in plots
    assert "${train.model_path}" in _names(stages["train"]["outs"])
    assert "${select.out}" in _names(stages["select"]["outs"]) and "${select.out}" in _names(stages["report"]["deps"])
    # the production model is the deployment's state, never removed or restored by DVC
    assert not {"${publish.production_path}", "${publish.history}"} & {
        o for s in stages.values() for o in _names(s.get("outs")) + _names(s.get("metrics"))}
    assert "${drift.html}" in _names(stages["drift"]["outs"])
    assert "${report.out_file}" in _names(stages["report"]["outs"])


# ----------------------------------------------------------------------------- code deps from the import graph

#: A module named in a string, as registries name them for ``importlib`` (``"cardamage.x.y:factory"``).
MODULE_STRING = re.compile(r"cardamage(?:\.[A-Za-z_]\w*)+(?::[\w.]+)?")
#: The constant head of an f-string naming modules of a package (``f"cardamage.data.formats.{name}"``).
PACKAGE_PREFIX = re.compile(r"cardamage(?:\.[A-Za-z_]\w*)*\.")


def _code_modules(root: Path = REPO) -> dict[str, Path]:
    """Dotted name -> file of every module of the ``cardamage`` package under ``root``."""
    modules = {}
    for path in sorted((root / "cardamage").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


class _Imports(ast.NodeVisitor):
    """The ``cardamage`` modules a piece of code may import: import statements anywhere (in functions
    too, but not under ``if TYPE_CHECKING:``) and module names in strings (``importlib`` registries).
    Importing ``a.b.c`` runs ``a`` and ``a.b`` too, so parent packages count."""

    def __init__(self, modules: dict[str, Path], module: str) -> None:
        self.modules, self.found = modules, set()
        is_package = modules[module].name == "__init__.py"
        self.package = module.split(".") if is_package else module.split(".")[:-1]

    def _add(self, dotted: str) -> None:
        parts = dotted.split(".")
        self.found |= {m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in self.modules}

    def visit_If(self, node: ast.If) -> None:
        test = ast.unparse(node.test)
        if test in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            package = self.package[:len(self.package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        self._add(base)
        for alias in node.names:  # ``from package import submodule``
            self._add(f"{base}.{alias.name}")

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and MODULE_STRING.fullmatch(node.value):
            self._add(node.value.split(":")[0])

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        head = node.values[0] if node.values else None
        if isinstance(head, ast.Constant) and isinstance(head.value, str) and PACKAGE_PREFIX.fullmatch(head.value):
            self.found |= {m for m in self.modules if m.startswith(head.value)}
        self.generic_visit(node)


def _imports(nodes, modules: dict[str, Path], module: str) -> set[str]:
    visitor = _Imports(modules, module)
    for node in nodes:
        visitor.visit(node)
    return {m for m in visitor.found if m != module}


def _click_parent(func: ast.FunctionDef) -> str | None:
    """``main`` for ``@main.command()`` / ``@main.group()``; ``None`` for a plain function."""
    for d in func.decorator_list:
        text = ast.unparse(d.func if isinstance(d, ast.Call) else d)
        if text.endswith((".command", ".group")):
            return text.split(".")[0]
    return None


def _cli_code(cli: ast.Module, command: str) -> list[ast.AST]:
    """The parts of ``cli.py`` that run for one command: module-level statements, the command and the
    groups above it, the helper functions these name (transitively), and helpers that the other
    commands' decorators call while ``cli.py`` is imported."""
    funcs = {n.name: n for n in cli.body if isinstance(n, ast.FunctionDef)}
    commands = {name for name, f in funcs.items() if _click_parent(f)}
    chain, name = [], command
    while name in funcs:
        chain.append(funcs[name])
        name = _click_parent(funcs[name])
    code = [n for n in cli.body if not isinstance(n, ast.FunctionDef)] + chain
    called = {n.func.id for f in funcs.values() if f.name in commands and f not in chain for d in f.decorator_list
              for n in ast.walk(d) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    helpers, todo = set(), set(called)
    while True:
        todo |= {n.id for node in code for n in ast.walk(node) if isinstance(n, ast.Name)}
        new = {t for t in todo if t in funcs and t not in commands and t not in helpers}
        if not new:
            return code
        helpers |= new
        code += [funcs[t] for t in sorted(new)]


def stage_modules(stage: str, root: Path = REPO) -> set[str]:
    """Every ``cardamage`` module the stage's command can import: what ``cli.py`` runs for it, then
    everything those modules import, transitively."""
    modules = _code_modules(root)
    cli = ast.parse(modules["cardamage.cli"].read_text(encoding="utf-8"))
    todo, seen = list(_imports(_cli_code(cli, COMMAND[stage]), modules, "cardamage.cli")), {"cardamage.cli"}
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            tree = ast.parse(modules[module].read_text(encoding="utf-8"))
            # another command-line module (a click group of its own): its commands do not run for the
            # stage's command, only its module-level code and the helpers that code names
            groups = any(isinstance(n, ast.FunctionDef) and _click_parent(n) for n in tree.body)
            body = _cli_code(tree, "") if module.startswith("cardamage.cli") and groups else tree.body
            todo += _imports(body, modules, module) - seen
    return seen


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def test_import_graph_sees_lazy_imports_registries_and_skips_type_checking():
    train, score = stage_modules("train"), stage_modules("score")
    assert {"cardamage.model.train", "cardamage.model.inputs", "cardamage.data.masks", "cardamage.config"} <= train
    assert "cardamage.active.scoring" in score and "cardamage.monitoring.drift" not in score
    assert not {m for m in stage_modules("prepare") if m.startswith("cardamage.monitoring")}
    cli = ast.parse((REPO / "cardamage" / "cli.py").read_text(encoding="utf-8"))
    runs = {getattr(n, "name", None) for n in _cli_code(cli, "backbone_import")}
    assert {"backbone_import", "backbone", "main"} <= runs and not runs & {"train", "prepare", "serve"}
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import cardamage.service.app\n"
                     "def f():\n    import cardamage.model.train\n"
                     "REG = {'x': 'cardamage.monitoring.drift:run_drift'}\n"
                     "g = lambda n: f'cardamage.data.formats.{n}'\n")
    found = _imports(tree.body, _code_modules(), "cardamage.cli")
    assert {"cardamage.model.train", "cardamage.monitoring.drift", "cardamage.data.formats.via"} <= found
    assert "cardamage.service.app" not in found


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_a_stage_imports_is_in_its_deps(stage):
    """Add an import to a stage's code and this fails until dvc.yaml lists the folder (or module)."""
    deps = _names(_dvc_yaml()["stages"][stage]["deps"])
    modules = _code_modules()
    missing = sorted(p for p in (modules[m].relative_to(REPO).as_posix() for m in stage_modules(stage))
                     if not _covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage!r} imports code it does not depend on: {missing}"


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


def _scratch(root: Path) -> dict[str, str]:
    """Make ``root`` a fresh git + DVC repository holding a copy of the project (tiny params); its environment."""
    if not Path(_bin("dvc")).is_file():
        pytest.skip("dvc is not installed in this environment (pip install 'dvc>=3')")
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
    return env


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    """A fresh git + DVC repository holding a copy of the project; ``dvc repro`` already run once."""
    root = tmp_path_factory.mktemp("pipeline")
    env = _scratch(root)
    first = _run([_bin("dvc"), "repro"], root, env)
    return {"root": root, "env": env, "first": first}


def test_editing_a_data_module_that_training_imports_marks_train_changed(tmp_path):
    """No training: stand-ins for what ``train`` reads and writes, recorded in dvc.lock by ``dvc commit``."""
    env = _scratch(tmp_path)
    p = load_params(tmp_path / "params.yaml")
    for folder in (p.prepare.out_dir, p.model.backbone_preset):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "stand-in.txt").write_text("stand-in")
    for out in (p.train.model_path, p.train.history_csv):
        (tmp_path / out).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / out).write_text("stand-in")
    _run([_bin("dvc"), "commit", "-f", "train"], tmp_path, env)
    # running a stage writes __pycache__/ into the code folders it depends on (.dvcignore skips them)
    _run([sys.executable, "-m", "compileall", "-q", "cardamage"], tmp_path, env)

    def train_status() -> str:
        return _run([_bin("dvc"), "status", "train"], tmp_path, env)

    assert "up to date" in train_status()
    with open(tmp_path / "cardamage" / "service" / "app.py", "a", encoding="utf-8") as fh:
        fh.write("\n# not imported by train\n")
    assert "up to date" in train_status()
    # cardamage/model/inputs.py imports cardamage/data/masks.py: an edit there must re-run train
    assert "cardamage.data.masks" in stage_modules("train", tmp_path)
    with open(tmp_path / "cardamage" / "data" / "masks.py", "a", encoding="utf-8") as fh:
        fh.write("\n# edited\n")
    status = train_status()
    assert "train:" in status and "modified:" in status and "cardamage/data" in status, status
    assert "cardamage/model" not in status, status


def _history(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "reports" / "history.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_repro_from_a_fresh_clone_runs_every_stage_then_nothing(project):
    root, env = project["root"], project["env"]
    assert _ran(project["first"]) == set(STAGES)
    for out in ("models/model.keras", "reports/metrics.json", "reports/drift.html", "reports/drift_summary.json",
                "reports/index.html", "reports/scores.parquet", "data/prepared/manifest.csv", "reports/selection.csv",
                "models/production.json"):
        assert (root / out).is_file(), out
    # the first model is promoted, with its card, and the weekly selection is made
    decision = json.loads((root / "reports" / "publish.json").read_text())
    assert decision["action"] == "promoted" and decision["reason"].startswith("first model: no production model")
    assert (root / "models" / "production.keras").read_bytes() == (root / "models" / "model.keras").read_bytes()
    card = json.loads((root / "models" / "production.json").read_text())
    assert card["data_version"]["source"] == "dvc.lock" and card["git"]["revision"] and card["photos"]["train"]
    assert card["test_set"]["n_photos"] == 10 and card["metrics"]["damage_iou"]["ci"]
    assert [e["promoted"] for e in _history(root)] == [True]
    selection = (root / "reports" / "selection.csv").read_text().splitlines()
    assert len(selection) == 1 + 5 and selection[0].endswith(",cluster"), selection[0]
    page = (root / "reports" / "index.html").read_text()
    assert "<h2>Promoted: the candidate" in page and "Next photos to label (5, hybrid)" in page
    assert len(list((root / "reports" / "report_assets" / "selection").glob("*.jpg"))) == 5
    assert "report: reports/index.html" in project["first"], "the report stage prints its summary"
    second = _run([_bin("dvc"), "repro"], root, env)
    assert _ran(second) == set() and "up to date" in second
    shown = subprocess.run([_bin("dvc"), "metrics", "show", "--json"], cwd=root, env=env, capture_output=True,
                           text=True, timeout=300).stdout
    json.loads(shown)
    assert "mean_iou" in shown and "drift_detected" in shown and "n_train" in shown and "promoted" in shown
    _run([_bin("dvc"), "plots", "show", "-o", str(root / "dvc_plots")], root, env)
    assert (root / "dvc_plots" / "index.html").is_file()
    _run(["git", "add", "-A"], root, env)  # what the lead commits: dvc.lock (reports/ and models/ are ignored)
    _run(["git", "commit", "-qm", "first run"], root, env)


@pytest.mark.slow
def test_a_param_change_reruns_only_its_stage_and_the_ones_after(project):
    root, env = project["root"], project["env"]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["drift"]["stattest_threshold"] = 0.02
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = _run([_bin("dvc"), "status"], root, env)
    assert "drift:" in status and "train:" not in status and "prepare:" not in status
    assert _ran(_run([_bin("dvc"), "repro"], root, env)) == {"drift", "report"}
    # against the committed run: metrics and plots diffs read the older revision from the DVC cache
    diff = subprocess.run([_bin("dvc"), "metrics", "diff", "--json"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert diff.returncode == 0 and "reports/drift_summary.json" in json.loads(diff.stdout), diff.stdout + diff.stderr
    _run([_bin("dvc"), "plots", "diff", "HEAD", "-o", str(root / "dvc_plots_diff")], root, env)
    assert (root / "dvc_plots_diff" / "index.html").is_file()


@pytest.mark.slow
def test_a_new_pool_photo_skips_training(project):
    root, env = project["root"], project["env"]
    shutil.copy(root / "data" / "sample" / "val" / "1.jpg", root / "data" / "sample" / "test" / "new.jpg")
    ran = _ran(_run([_bin("dvc"), "repro"], root, env))
    # prepare re-runs (data/sample changed) but writes the same bytes, so train, evaluate and publish are skipped
    assert ran == {"prepare", "score", "select", "drift", "report"}


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
    assert summary["n_labelled"] == 1 and summary["n_test"] == 10, "new labels leave the test split alone"
    assert len(_history(root)) == 2, "the retrained candidate went through the gate"


#: Two models from the candidate, its classifier biased to one answer everywhere, each through the gate
#: (one process: one TensorFlow start): ``marks_all`` marks every pixel as damage (its damage IoU is the
#: damaged share of the test photos), then ``worse`` finds no damage at all.
BIASED = """
import hashlib
from cardamage.config import load_params
from cardamage.model.io import load_model, save_model
from cardamage.model.publish import publish
params = load_params(None, ["data.root=data/prepared"])
model, info = load_model("models/model.keras")
bias = [50.0] + [-50.0] * len(info.classes)
for name, sign in (("marks_all", -1.0), ("worse", 1.0)):
    model.get_layer("logits").bias.assign([sign * b for b in bias])
    save_model(model, f"models/{name}.keras", info)
    print(name, publish(params, f"models/{name}.keras").line())
    print("production sha256", hashlib.sha256(open(params.publish.production_path, "rb").read()).hexdigest())
"""


@pytest.mark.slow
def test_a_worse_model_is_refused_and_the_service_keeps_production(project):
    """Last of the module: it leaves a refused candidate in publish.json.

    The tiny pipeline's 1-epoch model may find next to no damage, and nothing is worse than that; so a
    model that marks damage everywhere goes through the gate first (promoted unless production is as
    good), then the deliberately worse one, which finds no damage, must be refused.
    """
    import hashlib

    from cardamage.service.app import model_paths

    root, env = project["root"], project["env"]
    out = _run([sys.executable, "-c", BIASED], root, env)
    worse_line = next(line for line in out.splitlines() if line.startswith("worse "))
    assert "NOT PROMOTED" in worse_line and "lower bound is below" in worse_line, out
    production = root / "models" / "production.keras"
    after_marks_all, after_worse = re.findall(r"production sha256 (\w+)", out)
    assert after_marks_all == after_worse == hashlib.sha256(production.read_bytes()).hexdigest()
    kept = json.loads((root / "models" / "production.json").read_text())
    assert kept["metrics"]["damage_iou"]["value"] > 0.05, "production finds damage"
    decision = json.loads((root / "reports" / "publish.json").read_text())
    assert decision["action"] == "refused" and decision["candidate"]["metrics"]["damage_iou"]["value"] == 0.0
    assert decision["production"] == kept["model_version"]
    assert _history(root)[-1]["promoted"] is False
    params = load_params(root / "params.yaml")
    assert (root / model_paths(params)[0]).resolve() == production.resolve(), "the service serves production"
    assert params.predict.model_path == params.publish.production_path, "so does the Label Studio push"
    _run([_bin("cardamage"), "report"], root, env)
    assert "<h2>Not promoted: production " in (root / "reports" / "index.html").read_text()
