"""Options shared by several verbs: the config sources and the Ray settings."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from typing import Any

from rootzone.config import CV_CHOICES, Config, parse_override
from rootzone.ensemble.settings import RaySettings


def add_verb(sub: argparse._SubParsersAction, name: str, summary: str, func: Callable[[argparse.Namespace], Any]
             ) -> argparse.ArgumentParser:
    """Sub-command ``name`` run by ``func``: ``summary`` in the parent's list of commands, ``func``'s docstring
    atop its --help."""
    p = sub.add_parser(name, help=summary, description=inspect.getdoc(func))
    p.set_defaults(func=func)
    return p


def add_out_store(p: argparse.ArgumentParser) -> None:
    """The positional ``OUT.zarr`` of the verbs that write a store."""
    p.add_argument("out", metavar="OUT.zarr", help="output store path or fsspec URL")


def add_config_options(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeatable ``--set key=value``, common to every verb that trains."""
    p.add_argument("--config", metavar="FILE", help="TOML config file (see README: Configuration)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override any config field, e.g. --set lr=1e-3 --set hidden_size=64 (repeatable)")


def add_cv_options(p: argparse.ArgumentParser) -> None:
    """``--cv`` and ``--cv-groups``: the cross-validation scheme of ``train``, ``ensemble`` and ``tune``."""
    p.add_argument("--cv", choices=CV_CHOICES,
                   help="cross-validation: temporal holds out years (skill in gauged basins, default), spatial "
                        "holds out whole basins (skill in ungauged basins), spatiotemporal holds out basins and "
                        "years together (see docs/cross-validation.md)")
    p.add_argument("--cv-groups", metavar="COLUMN",
                   help="spatial schemes: attribute (or per-basin store variable) whose basins sharing a value "
                        "stay in one fold, e.g. a region code, so nested or neighbouring basins do not leak "
                        "(default: every basin its own random group)")


def cv_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides of :func:`add_cv_options` (None when not given)."""
    return {"cv": getattr(args, "cv", None), "cv_groups": getattr(args, "cv_groups", None)}


def config_from_args(args: argparse.Namespace, **explicit: Any) -> Config:
    """Defaults < --config file < --set overrides < explicit flags (those not None)."""
    overrides = dict(parse_override(o) for o in args.overrides)
    overrides.update({k: v for k, v in explicit.items() if v is not None})
    return Config.from_sources(args.config, overrides)


def add_ray_options(p: argparse.ArgumentParser) -> None:
    """The options of ``rootzone ensemble`` and ``rootzone tune``."""
    p.add_argument("--store", help="rootzone Zarr store (absolute path or URL every Ray node can read)")
    p.add_argument("--out", metavar="EXP", required=True, help="experiment folder: local path, file:// or s3:// URL")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per trial; fractions share a GPU (default 0.25 when the cluster has GPUs, else 0)")
    p.add_argument("--cpus-per-trial", type=float, default=2, help="CPUs per trial (default 2)")
    p.add_argument("--max-failures", type=int, default=3, help="retries per trial from its last checkpoint (default 3)")
    p.add_argument("--address", help="Ray cluster: 'auto', 'host:port' or 'ray://host:port' "
                                     "(default: the job's cluster under `ray job submit`, else a local one)")
    p.add_argument("--epochs", type=int, help="maximum epochs per trial")
    p.add_argument("--physics", help="auto | fused | compiled | eager")
    p.add_argument("--device", help="auto | cpu | cuda")
    add_cv_options(p)
    p.add_argument("--no-resource-check", action="store_true",
                   help="do not refuse per-trial resources larger than any current node (autoscaling clusters)")


def ray_settings(args: argparse.Namespace) -> RaySettings:
    return RaySettings(address=args.address, gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
                       max_failures=args.max_failures, resource_check=not args.no_resource_check)


def ray_config(args: argparse.Namespace) -> Config:
    """The config of an ensemble or tuning run from its flags."""
    return config_from_args(args, store=args.store, folds=getattr(args, "folds", None), epochs=args.epochs,
                            physics=args.physics, device=args.device, **cv_flags(args))
