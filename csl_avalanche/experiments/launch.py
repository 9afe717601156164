"""`torchrun --nproc_per_node=P -m csl_avalanche.run ...`: the Hydra side of a data-parallel run.

torchrun starts P copies of the command, and each composes its own config. `TorchrunLaunch`, a
Hydra callback (configs/config.yaml), runs before Hydra creates the run folder: it joins the
processes into one group (`csl_avalanche.distributed.join`) and makes them use rank 0's run
folder (`${now:...}` in the default folder name resolves to different seconds in different
processes). Ranks other than 0 write neither `.hydra/` nor a log file there, and print only
warnings and errors. Without torchrun it does nothing, and imports nothing heavy (Avalanche
loads only under torchrun).
"""

from __future__ import annotations

import traceback
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from csl_avalanche.core.errors import ConfigError
from csl_avalanche.experiments.checks import check_avalanche_home, launched_by_torchrun, stop
from csl_avalanche.experiments.schema import read_settings


class TorchrunLaunch(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not launched_by_torchrun():
            return
        try:
            settings = read_settings(config)  # the device and seed below must be valid
            check_avalanche_home()
            from csl_avalanche import distributed  # Avalanche

            distributed.join(settings.device, settings.seed)
        except ConfigError as err:
            stop(err)
        except Exception:  # Hydra would turn it into a warning, and P runs would start alone
            traceback.print_exc()
            raise SystemExit(1) from None
        run_dir = distributed.broadcast_object(str(OmegaConf.select(config, "hydra.run.dir")))
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = run_dir
            if not distributed.is_main():
                config.hydra.output_subdir = None
                config.hydra.job_logging = quiet(config.hydra.job_logging)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if launched_by_torchrun():
            stop(
                ConfigError(
                    "a sweep (-m) cannot run under torchrun; start one torchrun per configuration"
                )
            )

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if launched_by_torchrun():
            from csl_avalanche import distributed

            distributed.leave()


def quiet(logging_config: DictConfig) -> DictConfig:
    """A `logging.config.dictConfig` without its file handlers (those with a `filename`), its
    root logger at WARNING."""
    plain = OmegaConf.to_container(logging_config, resolve=False)
    handlers = plain.get("handlers") or {}
    files = {name for name, handler in handlers.items() if "filename" in (handler or {})}
    for name in files:
        del handlers[name]
    root = plain.setdefault("root", {})
    for logger in [root, *(plain.get("loggers") or {}).values()]:
        if "handlers" in logger:
            logger["handlers"] = [h for h in logger["handlers"] if h not in files]
    root["level"] = "WARNING"
    return OmegaConf.create(plain)
