"""The config: one typed schema (:mod:`.schema`) and how it is loaded and validated (:mod:`.load`).

Everything is importable from here (``from datajuicer_ray.config import VisionConfig, load_curate_config``).
"""

from datajuicer_ray.config.load import (
    load_config,
    load_curate_config,
    load_train_config,
    parse_shard,
)
from datajuicer_ray.config.schema import (
    NOT_FINGERPRINTED,
    ActorPoolConfig,
    ColumnsConfig,
    ConfigError,
    CurateConfig,
    InputConfig,
    OutputConfig,
    RayConfig,
    RewriteConfig,
    TextGuidedConfig,
    TrainConfig,
    TrainDataConfig,
    TrainEvalConfig,
    TrainLoopConfig,
    TrainModelConfig,
    TrainRunConfig,
    VisionConfig,
    fingerprint,
    fingerprinted,
    to_dict,
    unfingerprinted_keys,
)

__all__ = [
    "NOT_FINGERPRINTED",
    "ActorPoolConfig",
    "ColumnsConfig",
    "ConfigError",
    "CurateConfig",
    "InputConfig",
    "OutputConfig",
    "RayConfig",
    "RewriteConfig",
    "TextGuidedConfig",
    "TrainConfig",
    "TrainDataConfig",
    "TrainEvalConfig",
    "TrainLoopConfig",
    "TrainModelConfig",
    "TrainRunConfig",
    "VisionConfig",
    "fingerprint",
    "fingerprinted",
    "load_config",
    "load_curate_config",
    "load_train_config",
    "parse_shard",
    "to_dict",
    "unfingerprinted_keys",
]
