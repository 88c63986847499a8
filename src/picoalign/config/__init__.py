"""Training configuration as data (see :mod:`picoalign.config.loading`).

``from picoalign.config import TrainConfig, load_config, dump_config`` is the public API; the
package splits loading/merging, typed validation and path handling into their own modules.
"""

from picoalign.config.loading import TrainConfig, config_from_dict, dump_config, load_config

__all__ = ["TrainConfig", "config_from_dict", "dump_config", "load_config"]
