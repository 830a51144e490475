"""A labelled grid of images: X values across the top, Y values down the left, a title above."""

from PIL import Image, ImageDraw, ImageFont

MARGIN = 8
MAX_LABEL_CHARS = 80  # a longer label (a Prompt S/R value can be a whole prompt) is cut: it would widen every cell


def _shown(label: str) -> str:
    return label if len(label) <= MAX_LABEL_CHARS else label[:MAX_LABEL_CHARS - 1] + "…"


def _font(height: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(12, min(28, height // 12)))


def labelled_grid(images: list[list[Image.Image | None]], column_labels: list[str], row_labels: list[str],
                  title: str = "") -> Image.Image:
    """`images[row][column]` (None: a cell that did not run, left blank) with its labels drawn on the grid."""
    column_labels, row_labels = [_shown(label) for label in column_labels], [_shown(label) for label in row_labels]
    title = _shown(title)
    cell_w = max(image.width for row in images for image in row if image is not None)
    cell_h = max(image.height for row in images for image in row if image is not None)
    font = _font(cell_h)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = measure.textbbox((0, 0), "Ag", font=font)[3] + MARGIN
    left = max((measure.textlength(label, font=font) for label in row_labels), default=0)
    left = int(left + 2 * MARGIN) if any(row_labels) else 0
    top = (text_h if title else 0) + (text_h if any(column_labels) else 0)
    # a column is as wide as its widest label too, so labels over small cells do not run into each other
    widest = max((measure.textlength(label, font=font) for label in column_labels), default=0)
    cell_w = max(cell_w, int(widest + 2 * MARGIN))
    grid = Image.new("RGB", (left + cell_w * len(column_labels), top + cell_h * len(row_labels)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((MARGIN, MARGIN // 2), title, fill="black", font=font)
    for column, label in enumerate(column_labels):
        x = left + column * cell_w + (cell_w - draw.textlength(label, font=font)) / 2
        draw.text((x, top - text_h + MARGIN // 2), label, fill="black", font=font)
    for row, label in enumerate(row_labels):
        draw.text((MARGIN, top + row * cell_h + (cell_h - text_h) / 2), label, fill="black", font=font)
        for column, image in enumerate(images[row]):
            if image is not None:
                grid.paste(image.convert("RGB"), (left + column * cell_w + (cell_w - image.width) // 2, top + row * cell_h))
    return grid
