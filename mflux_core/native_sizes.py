"""Which image sizes a model can make. A model folder may list them in its model_index.json under
"_native_sizes" ([[width, height], ...]; diffusers ignores keys that start with "_"). A demo member lists the
sizes it was trained at (it paints noise at any other size); FLUX.1 folders list none: any size. A request for another
size runs at the native size nearest in shape, and the result carries a note that says so."""

import json
from pathlib import Path

NATIVE_SIZES_KEY = "_native_sizes"

Size = tuple[int, int]


def read_native_sizes(folder: Path | None) -> tuple[Size, ...]:
    """The (width, height) pairs a model folder lists; () when it lists none (any size)."""
    try:
        sizes = json.loads((Path(folder) / "model_index.json").read_text()).get(NATIVE_SIZES_KEY, ())
        return tuple((int(width), int(height)) for width, height in sizes)
    except (TypeError, OSError, ValueError, AttributeError):
        return ()


def link_any_size_copies(source_root: Path, target_root: Path) -> None:
    """Each model folder of `source_root` again under `target_root`, its parts linked and its model_index.json
    listing no native sizes: the demo weights as cheap stand-ins for FLUX.1 at sizes the demo cannot draw (memory
    and time at 2048 px and beyond; the demo paints noise there, which is all those measurements need)."""
    for folder in Path(source_root).iterdir():
        (Path(target_root) / folder.name).mkdir(parents=True)
        for part in folder.iterdir():
            copy = Path(target_root) / folder.name / part.name
            if part.name == "model_index.json":
                index = json.loads(part.read_text())
                index.pop(NATIVE_SIZES_KEY, None)
                copy.write_text(json.dumps(index))
            else:
                copy.symlink_to(part)


def native_size_for(native: tuple[Size, ...], width: int, height: int) -> Size | None:
    """None when width x height is native (or the model lists no sizes), else the native size closest in aspect
    ratio, then in area."""
    if not native or (width, height) in native:
        return None
    return min(native, key=lambda size: (abs(size[0] / size[1] - width / height),
                                         abs(size[0] * size[1] - width * height)))


def native_panel_for(native: tuple[Size, ...], panel: Size, canvas: Size) -> Size | None:
    """As native_size_for, for a tool that paints a canvas of whole panels (an in-context diptych: two panels
    side by side): None when the canvas is native, else the panel of the nearest native canvas that splits into
    panels of whole tokens (sides multiples of 16; None when no native canvas does)."""
    across, down = canvas[0] // panel[0], canvas[1] // panel[1]
    splits = tuple(size for size in native if size[0] % (16 * across) == 0 and size[1] % (16 * down) == 0)
    made = native_size_for(splits, *canvas) if splits and canvas not in native else None
    return None if made is None else (made[0] // across, made[1] // down)


def sizes_phrase(native: tuple[Size, ...]) -> str:
    """'64x64', or for several sizes their range: '48x48 to 128x128'."""
    if len(native) == 1:
        return f"{native[0][0]}x{native[0][1]}"
    widths, heights = [w for w, _ in native], [h for _, h in native]
    return f"{min(widths)}x{min(heights)} to {max(widths)}x{max(heights)}"


def size_note(model: str, native: tuple[Size, ...], asked: Size, made: Size) -> str:
    return (f"{model} makes {sizes_phrase(native)} images only, so this one is {made[0]}x{made[1]} instead of "
            f"{asked[0]}x{asked[1]}; other sizes need a FLUX.1 model.")
