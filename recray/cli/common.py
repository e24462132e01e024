"""What every command group of the ``recray`` command line shares: the help formatter
(every option's default shown), progress bars, JSON output and the option groups several
commands take (cluster, fixed budgets)."""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os


def default_of(func, name: str):
    """The default of parameter ``name`` of ``func`` (a function or a dataclass): the
    library's signature is the one source of every default the command line shows."""
    return inspect.signature(func).parameters[name].default


def _progress():
    """A progress bar factory when stdout and stderr are terminals, else ``None``."""
    from recray.pipeline.progress import bar_factory

    return bar_factory()


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none (None, False) or the help
    already says it."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

    def _format_action(self, action):
        # an option without help text still shows its default
        if not action.help and action.option_strings and action.default not in (
            None, False, argparse.SUPPRESS,
        ):  # fmt: skip
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's help shows the defaults (sub-parsers are built with this class)."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", _Help)
        super().__init__(*args, **kw)


def _write_json(path: str | None, payload) -> None:
    if not path:
        return
    from recray.localfiles import write_replacing

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_replacing(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")


def _read_json(path: str, flag: str):
    """The JSON document at ``path`` (given with option ``flag``); an ``InputError`` naming
    the option and file when it is missing or not JSON."""
    from recray.errors import InputError

    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{flag}: file {path!r} does not exist") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{flag}: cannot read {path!r} as JSON ({exc})") from None


def _ray_opts(args):
    from recray.pipeline.options import RayOptions

    # --actor-cpus and --retries where the command has them (recray compress)
    more = {k: getattr(args, k) for k in ("actor_cpus", "retries") if hasattr(args, k)}
    return RayOptions(
        address=args.address,
        actors=args.actors,
        connect_timeout=args.connect_timeout,
        verbose=args.verbose,
        **more,
    )


def _add_cluster_args(c) -> None:
    from recray.pipeline.options import RayOptions

    c.add_argument(
        "--connect-timeout",
        type=float,
        default=default_of(RayOptions, "connect_timeout"),
        metavar="S",
        help="seconds to wait for the Ray cluster at --address (or RAY_ADDRESS) before failing",
    )
    c.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's own logs, worker output and Ray Data's per-operator progress bars",
    )


def _n_samples_arg(value: str):
    """``--n-samples``: an integer ``N``, or ``kl`` (per-block ``N`` from the information)."""
    if value.strip().lower() == "kl":
        return "kl"
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither an integer N >= 1 nor 'kl'"
        ) from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"N must be >= 1; got {n}")
    return n


N_SAMPLES_HELP = (
    "fixed budget N of orc/sp-orc (and of the exact methods' fallback): an integer for every "
    "block, or 'kl': per block N_b = 2^ceil(I_b + --kl-offset-bits) from the block's "
    "information I_b, capped at 2^--kl-max-bits (orc then writes log2 N_b index bits per block)"
)


def _add_kl_args(c, func) -> None:
    """``--kl-offset-bits`` and ``--kl-max-bits``, with the defaults of ``func``'s."""
    from recray.plan import KL_SAMPLES_MAX_BITS

    c.add_argument(
        "--kl-offset-bits",
        type=float,
        default=default_of(func, "kl_offset_bits"),
        help="--n-samples kl: bits added to each block's information before rounding up",
    )
    c.add_argument(
        "--kl-max-bits",
        type=int,
        default=default_of(func, "kl_max_bits"),
        help=f"--n-samples kl: cap of log2 N_b (default {KL_SAMPLES_MAX_BITS}, at most 24)",
    )


def _add_ray_args(c, func) -> None:
    """``--engine`` (``func``'s default), ``--address``, ``--actors`` and the cluster options."""
    c.add_argument(
        "--engine",
        choices=("ray", "local"),
        default=default_of(func, "engine"),
        help="where the search runs",
    )
    c.add_argument("--address", default=None, help="Ray cluster to join (default: local Ray)")
    c.add_argument("--actors", type=int, default=None, help="actor pool size")
    _add_cluster_args(c)


DATA_DIR_HELP = (
    "MNIST cache directory (default: $RECRAY_DATA_DIR/mnist, else "
    "$XDG_CACHE_HOME/recray/mnist, i.e. ~/.cache/recray/mnist)"
)
