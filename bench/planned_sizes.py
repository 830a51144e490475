"""The largest size the memory planner accepts under a budget, on the shipped demo model, without running it.

For each square size it asks the same check `mflux-studio generate --memory-budget GB` makes before
loading (ResidentModels.check_before_loading) and prints the plan, or the refusal. A real run of the
largest accepted size confirms it (bench/large_sizes.py); this one takes seconds where that takes hours.

    python -m bench.planned_sizes [--budget 6] [--sizes 1024 2048 3072 4096]
"""

import argparse
import logging

from mflux_core.backend import resolve_dtype
from mflux_core.errors import InvalidRequest
from mflux_core.manager import ModelManager
from mflux_core.memory import GB
from mflux_core.request import GenerationRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=6.0, help="--memory-budget in GB")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(range(1024, 4097, 512)))
    args = parser.parse_args()
    plans: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: plans.append(record.getMessage())
    logging.getLogger("mflux_studio.memory").addHandler(handler)
    logging.getLogger("mflux_studio.memory").setLevel(logging.INFO)
    manager = ModelManager(memory_budget_bytes=int(args.budget * GB))
    accepted = []
    for size in args.sizes:
        request = GenerationRequest(tool="generate", model="demo", prompt="a red circle", steps=1, width=size,
                                    height=size).validated()
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
