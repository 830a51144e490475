"""Which image sizes a model can make. A model folder may list them in its model_index.json under
"_native_sizes" ([[width, height], ...]; diffusers ignores keys that start with "_"). A demo member lists the
sizes it was trained at (it paints noise at any other size); FLUX.1 folders list none: any size. A request for another
size runs at the native size nearest in shape, and the result carries a note that says so. Every size is also whole
latent tokens: multiples of 16 px for FLUX.1's VAE, which every size a request allows is; a model whose VAE scales by
more than 8 needs larger steps, and another size runs rounded down to them, as diffusers rounds."""

import json
from pathlib import Path

from mflux_core.errors import InvalidRequest

NATIVE_SIZES_KEY = "_native_sizes"
REQUEST_SIZE_STEP = 16  # every size a request allows, or an input image gives, is a multiple of this (settings_schema)

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


def makes_any_size(native: tuple[Size, ...], token_side: int) -> bool:
    """Whether a model with these native sizes and tokens makes every size a request allows."""
    return not native and REQUEST_SIZE_STEP % token_side == 0


def makes_size(native: tuple[Size, ...], token_side: int, size: Size) -> bool:
    return size in native if native else size[0] % token_side == 0 and size[1] % token_side == 0


def what_it_makes(native: tuple[Size, ...], token_side: int) -> str:
    """'64x64 images only', or 'sizes in steps of 32 px (its VAE scales by 16)': what a refusal says a model makes."""
    return f"{sizes_phrase(native)} images only" if native else \
        f"sizes in steps of {token_side} px (its VAE scales by {token_side // 2})"


def other_sizes_need(native: tuple[Size, ...], token_side: int) -> str:
    return "a FLUX.1 model" if native else f"multiples of {token_side} px"


def whole_tokens_size(token_side: int, width: int, height: int) -> Size | None:
    """None when both sides are whole tokens of `token_side` px, else each side rounded down to whole tokens (at
    least one)."""
    made = (max(token_side, width - width % token_side), max(token_side, height - height % token_side))
    return None if made == (width, height) else made


def check_whole_tokens(token_side: int, size: Size, what: str) -> None:
    """Refuse `size` (`what`: "The training size") where it is not whole tokens, for a tool that cannot resize."""
    made = whole_tokens_size(token_side, *size)
    if made is not None:
        raise InvalidRequest(f"{what} {size[0]}x{size[1]} is not one this model makes: it makes "
                             f"{what_it_makes((), token_side)}; use {made[0]}x{made[1]}.")


def sizes_phrase(native: tuple[Size, ...]) -> str:
    """'64x64', or for several sizes their range: '48x48 to 128x128'."""
    if len(native) == 1:
        return f"{native[0][0]}x{native[0][1]}"
    widths, heights = [w for w, _ in native], [h for _, h in native]
    return f"{min(widths)}x{min(heights)} to {max(widths)}x{max(heights)}"


MASKED_AREA_MADE = "the masked area is inpainted at"  # a note's subject for inpaint area "Only masked"


def size_note(model: str, native: tuple[Size, ...], asked: Size, made: Size, made_what: str = "this one is") -> str:
    """`made_what`: what has the size made ("this one is"; an inpainted area's "the masked area is inpainted at")."""
    return (f"{model} makes {sizes_phrase(native)} images only, so {made_what} {made[0]}x{made[1]} instead of "
            f"{asked[0]}x{asked[1]}; other sizes need a FLUX.1 model.")


def tokens_note(model: str, token_side: int, asked: Size, made: Size, made_what: str = "this image is") -> str:
    return (f"{model} makes {what_it_makes((), token_side)}, so {made_what} {made[0]}x{made[1]} instead of "
            f"{asked[0]}x{asked[1]}.")
