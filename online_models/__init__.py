"""freshrec's online model core: pure numpy / torch / river, no pyflink, kafka or prometheus.

Pure functions on plain state for the PyFlink job (:func:`learn_bundle`,
:func:`apply_gradients_to_rows`, :func:`recommend_for_user`), the in-memory
:class:`FreshRecModel` composed of the same functions, baselines, and prequential
evaluation.

>>> from online_models import FreshRecModel, ModelConfig
>>> FreshRecModel(ModelConfig(dim=8)).n_items
0
"""

from online_models.baselines import MODEL_NAMES, PopularityModel, RiverMFModel, make_model
from online_models.bundle import learn_bundle
from online_models.config import ModelConfig
from online_models.eval_results import ModelResult
from online_models.evaluate import prequential
from online_models.item_gradients import (
    ItemGradients,
    apply_gradients_to_items,
    apply_gradients_to_rows,
    apply_item_gradients,
)
from online_models.item_state import ItemRows, ItemState
from online_models.learning import adagrad_rows, lr_schedule, new_item_state
from online_models.model import FreshRecModel, Recommender
from online_models.neighbour_baselines import ItemKNNModel, RecentItemsModel, SessionKNNModel
from online_models.replica import ItemReplica
from online_models.scoring import query_vector, recommend_for_user
from online_models.state import UserState
from online_models.streaming import DriftMonitor, RollingMetrics, UserClusters
from online_models.tables import EmbeddingTable, content_vector

__all__ = [
    "MODEL_NAMES",
    "DriftMonitor",
    "EmbeddingTable",
    "FreshRecModel",
    "ItemGradients",
    "ItemKNNModel",
    "ItemReplica",
    "ItemRows",
    "ItemState",
    "ModelConfig",
    "ModelResult",
    "PopularityModel",
    "RecentItemsModel",
    "Recommender",
    "RiverMFModel",
    "RollingMetrics",
    "SessionKNNModel",
    "UserClusters",
    "UserState",
    "adagrad_rows",
    "apply_gradients_to_items",
    "apply_gradients_to_rows",
    "apply_item_gradients",
    "content_vector",
    "learn_bundle",
    "lr_schedule",
    "make_model",
    "new_item_state",
    "prequential",
    "query_vector",
    "recommend_for_user",
]
