"""Canny edges and the mask helpers at 1024x1024: OpenCV (now) vs the numpy code they replaced.

The numpy side is read from git (`--before`, the commit before the switch), so both run in one
process and alternate. On a photo-like picture (tests/fixtures/photos.py) it also prints how many
of cv2.Canny's edge pixels the old detector found: the edge maps the InstantX ControlNet was trained
on are cv2's.

    python -m bench.canny [--size 1024] [--repeats 5] [--before 84ae3d3]
"""

import argparse
import subprocess
import sys
import types

BEFORE = "84ae3d3"  # the last commit with the numpy detector and mask helpers


def module_at(commit: str, path: str, name: str, replacing: dict[str, types.ModuleType]) -> types.ModuleType:
    """The module at `path` as of `commit`, importing `replacing` modules in place of today's."""
    source = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, text=True, check=True).stdout
    module = types.ModuleType(name)
    saved = {key: sys.modules.get(key) for key in replacing}
    sys.modules.update(replacing)
    try:
        exec(compile(source, f"{commit}:{path}", "exec"), module.__dict__)
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key)
            else:
                sys.modules[key] = value
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", default=BEFORE)
    args = parser.parse_args()

    import numpy as np

    from bench.timing import alternate, git_revision, load_line, machine_line, median, spread, table
    from mflux_core.images import canny, masks
    from tests.fixtures.photos import textured_photo

    old_masks = module_at(args.before, "mflux_core/images/masks.py", "old_masks", {})
    old_canny = module_at(args.before, "mflux_core/images/canny.py", "old_canny",
                          {"mflux_core.images.masks": old_masks})
    print(machine_line())
    print(f"now {git_revision()} vs numpy at {args.before}, {args.size}x{args.size}")

    photo = textured_photo(args.size, args.size, seed=1)
    mask = np.zeros((args.size, args.size), bool)
    quarter = args.size // 4
    mask[quarter : 2 * quarter, quarter : 3 * quarter] = True
    generated = textured_photo(args.size, args.size, seed=2)
    cases = {
        "canny_edges 100/200": lambda module: module.canny_edges(photo),
        "grow_mask 32 px": lambda module: module.grow_mask(mask, 32),
        "grow_mask -32 px": lambda module: module.grow_mask(mask, -32),
        "blur_mask radius 8": lambda module: module.blur_mask(mask, 8.0),
        "feathered_paste 16 px": lambda module: module.feathered_paste(photo, generated, mask, 16),
    }
    rows, ratios = [], []
    for name, call in cases.items():
        new, old = (canny, old_canny) if name.startswith("canny") else (masks, old_masks)
        seconds = alternate({"opencv": lambda: call(new), "numpy": lambda: call(old)}, repeats=args.repeats)
        opencv_s, numpy_s = median(seconds["opencv"]), median(seconds["numpy"])
        rows.append([name, opencv_s, numpy_s, f"{numpy_s / opencv_s:.1f}", spread(seconds["opencv"]),
                     spread(seconds["numpy"])])
        ratios.append(f"{name} numpy/opencv {numpy_s / opencv_s:.1f}")
    print(table(["what", "opencv s", "numpy s", "numpy/opencv", "opencv spread", "numpy spread"], rows))

    reference = np.asarray(canny.canny_edges(photo))[..., 0] == 255
    before = np.asarray(old_canny.canny_edges(photo))[..., 0] == 255
    print(f"edge pixels: cv2.Canny {reference.sum()}, numpy {before.sum()}; the numpy detector found "
          f"{(before & reference).sum() / reference.sum():.0%} of cv2's")
    print(load_line())
    print("ratios: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
