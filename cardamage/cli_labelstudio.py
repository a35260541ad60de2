"""``cardamage labelstudio ...``: the Label Studio project, its labelling configuration and the ML backend."""

from __future__ import annotations

import sys
from typing import Any

import click

from cardamage.cli_support import with_params
from cardamage.config import Params


@click.group()
def labelstudio() -> None:
    """Label Studio project setup (env: LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY)."""


@labelstudio.command("config")
@click.option("--check", is_flag=True, help="Only check that labelstudio.label_config agrees with data.classes.")
@with_params
def labelstudio_config(params: Params, check: bool) -> None:
    """Write the labelling configuration generated from data.classes to labelstudio.label_config."""
    from cardamage.fileio import write_text
    from cardamage.labelling.label_config import check_label_config_file, generate_label_config

    path = params.labelstudio.label_config
    if check:
        problems = check_label_config_file(path, params.data.classes)
        for problem in problems:
            click.echo(problem, err=True)
        if problems:
            sys.exit(1)
        click.echo(f"{path} agrees with data.classes {params.data.classes}")
        return
    write_text(path, generate_label_config(params.data.classes))
    click.echo(f"wrote {path} for classes {params.data.classes}")


@labelstudio.command("init")
@click.option("--backend", "backend_url", default=None,
              help="Also connect the ML backend at this URL (`cardamage labelstudio backend`) to the project.")
@with_params
def labelstudio_init(params: Params, backend_url: str | None) -> None:
    """Create the Label Studio project (or reuse it by title) with the config from data.classes."""
    from cardamage.labelling.label_config import generate_label_config
    from cardamage.labelling.push import connect_params, local_files_root

    ls = params.labelstudio
    client = connect_params(params)
    project_id, what = client.ensure_project(ls.project_title, generate_label_config(params.data.classes))
    if ls.image_access == "local-files":
        local_files_root(ls)  # fails early with a clear message when the root is not configured
    click.echo(f"{what} project {project_id} {ls.project_title!r} at {client.url}/projects/{project_id} "
               f"(classes {params.data.classes}, images by {ls.image_access})")
    if backend_url:
        from cardamage.service.ml_backend import backend_auth

        backend_id, done = client.connect_ml_backend(project_id, backend_url, basic_auth=backend_auth(params))
        click.echo(f"{done} ML backend connection {backend_id} to {backend_url}: in the Data Manager, select "
                   "tasks and choose Actions > Retrieve Predictions; sort by prediction score for the most "
                   "informative first")


@labelstudio.command("backend")
@click.option("--host", default=None, help="Address to listen on (default: labelstudio.backend.host).")
@click.option("--port", type=int, default=None, help="Port (default: labelstudio.backend.port).")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Damage model (default: labelstudio.backend.model_path, serve.model_path, predict.model_path).")
@with_params
def labelstudio_backend(params: Params, host: str | None, port: int | None, model_path: str | None) -> None:
    """Serve the model as a Label Studio ML backend (/health, /setup, /predict, /webhook)."""
    from cardamage.service.ml_backend import run_backend

    run_backend(params, host=host, port=port, model_path=model_path)


@labelstudio.command("up")
@click.option("--install/--no-install", default=True, show_default=True,
              help="Create .venv-ls with Label Studio when it is not installed.")
@click.option("--backend/--no-backend", default=True, show_default=True,
              help="Also start the ML backend (when a model exists) and connect it to the project.")
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True,
              help="Seconds to wait for the server and the backend to answer /health.")
@with_params
def labelstudio_up(params: Params, install: bool, backend: bool, timeout_s: float) -> None:
    """Start a local Label Studio (generated admin and token, stored for every command) and the ML backend."""
    from cardamage.labelling.server import labelstudio_up as up

    args = click.get_current_context().meta.get("cardamage.params_args", (None, ()))
    click.echo(up(params, args, install=install, backend=backend, timeout_s=timeout_s, echo=click.echo))


@labelstudio.command("down")
@with_params
def labelstudio_down(params: Params) -> None:
    """Stop the Label Studio server and the ML backend that `cardamage labelstudio up` started."""
    from cardamage.labelling.server import labelstudio_down as down

    click.echo(down(params))


@labelstudio.command("review")
@with_params
def labelstudio_review(params: Params) -> None:
    """Send the labels the last pull's audit flagged (labelstudio.audit.csv) back to Label Studio for review."""
    from cardamage.labelling.review import push_reviews

    client, project_id = project_client(params)
    click.echo(push_reviews(client, project_id, params).text())


def project_client(params: Params) -> tuple[Any, int]:
    """The Label Studio client and the id of the project titled ``labelstudio.project_title`` (which must exist)."""
    from cardamage.labelling.push import connect_params

    client = connect_params(params)
    project_id = client.find_project(params.labelstudio.project_title)
    if project_id is None:
        raise click.ClickException(f"no Label Studio project titled {params.labelstudio.project_title!r} at "
                                   f"{client.url} (run `cardamage labelstudio init`)")
    return client, project_id
