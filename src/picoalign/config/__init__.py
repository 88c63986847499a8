"""Training configuration as data (see :mod:`picoalign.config.loading`).

``from picoalign.config import TrainConfig, ModelConfig, load_config, dump_config`` is the public
API; the package splits loading/merging, typed validation, path handling and the model's
options (:mod:`picoalign.config.model`) into their own modules.
"""

from picoalign.config.loading import TrainConfig, config_from_dict, dump_config, load_config
from picoalign.config.model import ModelConfig

__all__ = ["ModelConfig", "TrainConfig", "config_from_dict", "dump_config", "load_config"]
