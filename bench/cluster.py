"""Throughput of one batch over 1 and N engine replicas (`--cluster local`), on the demo model.

For each replica count: start a local Ray cluster with that many replicas, warm every replica with one image, then
time --rounds batches of --images images (distinct seeds, sent all at once, as the page sends a batch) and take the
median. The last line gives images per second for each count and the speedup of N replicas over 1. On a machine
with fewer free cores than replicas the replicas share them and the speedup stays small: read it with the load line.

    .venv/bin/python -m bench.cluster [--replicas 2] [--images 16] [--size 128] [--steps 4] [--rounds 2]
"""

import argparse
import tempfile
from pathlib import Path

import mflux_core  # noqa: F401  (loads OpenBLAS before mlx.core)

from bench.timing import git_revision, load_line, machine_line, median, spread, table, timed
from mflux_core.request import GenerationRequest


def batch_seconds(replicas: int, args, models: Path) -> list[float]:
    from mflux_core.cluster.engine import connect

    engine = connect("local", replicas, models)
    try:
        def batch(first_seed: int, count: int) -> None:
            requests = [GenerationRequest(prompt="a lighthouse at dusk", model="demo", seed=first_seed + i,
                                          steps=args.steps, width=args.size, height=args.size) for i in range(count)]
            results = [run(None) for run in engine.batch(requests)]
            assert [r.request.seed for r in results] == [q.seed for q in requests]  # in order

        batch(10_000, replicas)  # loads the model on every replica
        return [timed(lambda: batch(round_ * args.images, args.images)) for round_ in range(args.rounds)]
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(machine_line(), "·", git_revision())
    seconds = {}
    with tempfile.TemporaryDirectory() as models:
        for count in sorted({1, args.replicas}):
            seconds[count] = batch_seconds(count, args, Path(models))
            print(f"{count} replica(s) done · {load_line()}", flush=True)
    rows = [[count, median(s), spread(s), args.images / median(s)] for count, s in seconds.items()]
    print(table(["replicas", f"s per {args.images} images", "spread", "images/s"], rows))
    print(f"{args.images} images of {args.size} px, {args.steps} steps: "
          + ", ".join(f"{count} replica(s) {args.images / median(s):.2f} images/s" for count, s in seconds.items())
          + f"; speedup {median(seconds[1]) / median(seconds[args.replicas]):.2f}x · {load_line()}")


if __name__ == "__main__":
    main()
