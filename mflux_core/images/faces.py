"""Faces in a picture, for the face fix (mflux_core/face_fix.py): OpenCV's frontal-face Haar cascade, which ships
inside opencv-python, so nothing is downloaded. ADetailer's YOLO face models need ultralytics and PyTorch; this
detector finds upright, roughly frontal faces of at least a 16th of the picture's shorter side, as boxes, largest
first. Its rectangles are ADetailer's bbox masks, grown by ADetailer's default dilation."""

from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

from mflux_core.images.inpaint_area import Box

CASCADE = "haarcascade_frontalface_default.xml"
SMALLEST_FACE_FRACTION = 16  # of the shorter side: smaller detections are texture, not faces worth repainting
GROW = 4  # px the mask reaches past the detection (ADetailer's ad_dilate_erode default)


@lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    return cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)


def face_boxes(image: Image.Image) -> list[Box]:
    """The faces in `image`, largest first."""
    gray = cv2.equalizeHist(cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY))
    smallest = max(24, min(image.size) // SMALLEST_FACE_FRACTION)
    found = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest))
    boxes = [Box(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in found]
    return sorted(boxes, key=lambda box: box.size[0] * box.size[1], reverse=True)


def face_mask(size: tuple[int, int], box: Box) -> Image.Image:
    """A mask ('L', white = repaint) of `box` grown by GROW px, within an image of `size`."""
    width, height = size
    mask = np.zeros((height, width), np.uint8)
    mask[max(0, box.top - GROW):min(height, box.bottom + GROW), max(0, box.left - GROW):min(width, box.right + GROW)] \
        = 255
    return Image.fromarray(mask, "L")
