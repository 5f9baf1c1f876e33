"""freshrec's online model core: pure numpy / torch / river, no pyflink, kafka or prometheus.

Pure functions on plain state for the PyFlink job (:func:`learn_bundle`,
:func:`apply_gradients_to_rows`, :func:`recommend_for_user`), the in-memory
:class:`FreshRecModel` composed of the same functions, baselines, and prequential
evaluation.

>>> from online_models import FreshRecModel, ModelConfig
>>> FreshRecModel(ModelConfig(dim=8)).n_items
0
"""

from __future__ import annotations

import importlib
from typing import Any

# Where each name lives. Imported on first use (PEP 562): `import online_models.config`
# (the settings, every CLI) then costs no River, SciPy or pandas import (~0.7 s).
_HOME = {
    "PopularityModel": "baselines",
    "RiverMFModel": "baselines",
    "learn_bundle": "bundle",
    "ModelConfig": "config",
    "ModelResult": "eval_results",
    "prequential": "evaluate",
    "ItemGradients": "item_gradients",
    "apply_gradients_to_items": "item_gradients",
    "apply_gradients_to_rows": "item_gradients",
    "apply_item_gradients": "item_gradients",
    "ItemRows": "item_state",
    "ItemState": "item_state",
    "adagrad_rows": "learning",
    "lr_schedule": "learning",
    "new_item_state": "learning",
    "FreshRecModel": "model",
    "Recommender": "model",
    "ItemKNNModel": "neighbour_baselines",
    "RecentItemsModel": "neighbour_baselines",
    "SessionKNNModel": "neighbour_baselines",
    "ItemReplica": "replica",
    "MODEL_NAMES": "replay_models",
    "make_model": "replay_models",
    "query_vector": "scoring",
    "recommend_for_user": "scoring",
    "UserState": "state",
    "DriftMonitor": "streaming",
    "RollingMetrics": "streaming",
    "UserClusters": "streaming",
    "EmbeddingTable": "tables",
    "content_vector": "tables",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
