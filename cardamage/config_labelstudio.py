"""The ``labelstudio`` section of ``params.yaml``, with its ``backend`` sub-section (the Label Studio ML
backend, :mod:`cardamage.service.ml_backend`). Re-exported by :mod:`cardamage.config`, which reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class BackendParams:
    """``cardamage labelstudio backend``: the model served to Label Studio over its ML backend protocol.

    ``/predict`` answers at most ``batch_size`` photos per model call and stops starting new tasks after
    ``time_limit_s`` (Label Studio gives up after 100 s: tasks not reached get no prediction and are
    asked for again on the next "Retrieve predictions"). ``retrain_after`` new annotations (webhook
    events) start ``retrain_commands`` in the background, one run at a time, once no event came for
    ``retrain_quiet_s`` seconds. With ``basic_auth_user`` set, every request needs that user and the
    password in ``$CARDAMAGE_BACKEND_PASSWORD`` (Label Studio: "Use authentication").
    """

    host: str = "127.0.0.1"
    port: int = 9090
    model_path: str | None = None
    batch_size: int = 8
    time_limit_s: float = 60.0
    max_side: int = 1024
    retrain_after: int = 20
    retrain_quiet_s: float = 5.0
    retrain_commands: list[str] = field(default_factory=lambda: ["cardamage pull", "dvc repro"])
    retrain_log: str = "reports/backend_retrain.log"
    state_file: str = ".cardamage/backend_state.json"
    basic_auth_user: str | None = None


@dataclass
class AuditParams:
    """The label audit of every ``cardamage pull`` (:mod:`cardamage.labelling.audit`, cleanlab).

    Each pulled label is compared with the model at ``predict.model_path`` on a ``grid x grid`` pixel
    grid. Only labels made after that model was trained (out of sample) can be flagged: a photo is
    flagged when cleanlab finds label issues on at least ``flag_issue_share`` of its pixels or its
    label quality score is below ``flag_quality``.
    """

    enabled: bool = True
    grid: int = 64
    flag_issue_share: float = 0.1
    flag_quality: float = 0.2
    csv: str = "reports/label_audit.csv"
    summary: str = "reports/label_audit.json"


@dataclass
class LabelStudioParams:
    """Label Studio project, image access and where pulled labels go (``cardamage push`` / ``pull``)."""

    url: str | None = None
    project_title: str = "cardamage damage labelling"
    image_access: Literal["upload", "local-files"] = "upload"
    local_files_root: str | None = None
    batch_size: int = 50
    timeout_s: float = 30.0
    deadline_s: float | None = 90.0
    max_retries: int = 3
    ledger: str = "annotation/ledger.json"
    exports_dir: str = "annotation/exports"
    labelled_dir: str = "data/labelled"
    crops_dir: str = "annotation/crops"
    region_margin: float = 0.25
    label_config: str = "annotation/label_config.xml"
    disagreement_iou: float = 0.5
    report_csv: str = "reports/annotation_vs_model.csv"
    connection_file: str = ".cardamage/labelstudio.json"
    server_port: int = 8080
    backend: BackendParams = field(default_factory=BackendParams)
    audit: AuditParams = field(default_factory=AuditParams)
