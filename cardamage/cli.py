"""The ``cardamage`` command line: thin click commands over the library's pure functions.

Every command takes ``--params FILE`` and repeatable ``--set section.key=value``; heavy
modules (TensorFlow, Label Studio, Evidently) are imported inside the command that needs them.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

from . import __version__
from .config import ConfigError, Params, load_params

log = logging.getLogger("cardamage")

#: Errors that are the user's to fix: shown as one line, no traceback (``-v`` shows it).
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ValueError, OSError, KeyError)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2) if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    if verbose < 2:
        for noisy in ("PIL", "matplotlib", "urllib3", "httpx", "absl", "h5py"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def with_params(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--params`` and ``--set`` to a command and pass the loaded :class:`Params` as ``params``.

    Also turns user errors (bad config, bad input files) into a one-line message and exit code 2.
    """

    @click.option("--params", "params_file", type=click.Path(dir_okay=False), default=None,
                  help="Read parameters from this file instead of ./params.yaml.")
    @click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                  help="Override one parameter for this run (repeatable).")
    @click.pass_context
    @functools.wraps(func)
    def wrapper(ctx: click.Context, params_file: str | None, overrides: tuple[str, ...], **kwargs: Any):
        try:
            params = load_params(params_file, overrides)
            return func(params=params, **kwargs)
        except click.ClickException:
            raise
        except USER_ERRORS as exc:
            if ctx.find_root().params.get("verbose"):
                log.exception("failed")
            raise click.ClickException(str(exc)) from exc

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cardamage")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """cardamage: find car damage in claim photos and improve the model by active learning."""
    _setup_logging(verbose)


@main.command()
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path())
@click.option("--to", "fmt", type=click.Choice(["coco", "via", "via1", "via-project", "via-csv", "labelstudio"]),
              required=True, help="Output format.")
@click.option("--category-key", default=None, help="Region attribute holding the category (auto-detected).")
@with_params
def convert(params: Params, src: str, dst: str, fmt: str, category_key: str | None) -> None:
    """Convert annotations SRC (VIA 1/2, VIA CSV, COCO, Label Studio) to DST in another format."""
    from .formats import read_annotations, write_annotations

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
    from .stats import dataset_stats, format_stats

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
    from .show import show_dataset

    written = show_dataset(path or params.data.root, out_dir, params.data, grid=grid, limit=limit)
    click.echo(f"wrote {len(written)} picture(s) to {out_dir}")


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    main()
