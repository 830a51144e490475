"""The largest size the memory planner accepts under a budget, without running it: on the shipped demo weights (a
copy that lists no native sizes, so that each size is planned as asked, not as the 128 px the demo makes), or on a
model of your own (--model, --path).

For each square size it asks the same check `mflux-studio generate --memory-budget GB` makes before
loading (ResidentModels.check_before_loading) and prints the plan, or the refusal. A real run of the
largest accepted size confirms it (bench/large_sizes.py); this one takes seconds where that takes hours.

    python -m bench.planned_sizes [--budget 6] [--sizes 1024 2048 3072 4096] [--model dev | --path FOLDER]
"""

import argparse
import logging
import os
import tempfile
from pathlib import Path

from mflux_core.backend import resolve_dtype
from mflux_core.errors import InvalidRequest
from mflux_core.manager import ModelManager
from mflux_core.memory import GB
from mflux_core.native_sizes import link_any_size_copies
from mflux_core.request import GenerationRequest
from mflux_core.weights.resolve import DEMO_MODELS_ENV, demo_models_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=6.0, help="--memory-budget in GB")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(range(1024, 4097, 512)))
    parser.add_argument("--model", default="demo", help="the model to plan (default: the demo weights at any size)")
    parser.add_argument("--path", help="a model folder to plan instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        link_any_size_copies(demo_models_dir(), Path(tmp) / "demo_models")
        os.environ[DEMO_MODELS_ENV] = str(Path(tmp) / "demo_models")
        plan_sizes(args)


def plan_sizes(args: argparse.Namespace) -> None:
    plans: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: plans.append(record.getMessage())
    logging.getLogger("mflux_studio.memory").addHandler(handler)
    logging.getLogger("mflux_studio.memory").setLevel(logging.INFO)
    manager = ModelManager(memory_budget_bytes=int(args.budget * GB))
    accepted = []
    for size in args.sizes:
        request = GenerationRequest(tool="generate", model=args.path or args.model, prompt="a red circle", steps=1,
                                    width=size, height=size).validated()
        try:
            manager.resident.check_before_loading(manager.resolve(request), request, resolve_dtype(None))
            accepted.append(size)
            print(f"{size}x{size}: fits; {plans[-1]}")
        except InvalidRequest as refusal:
            print(f"{size}x{size}: refused; {refusal}")
    print(f"largest square the planner accepts within {args.budget:g} GB: "
          f"{f'{max(accepted)}x{max(accepted)}' if accepted else 'none'}")


if __name__ == "__main__":
    main()
