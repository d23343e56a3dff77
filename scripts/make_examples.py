"""Regenerate the bundled example pair (src/metauas/examples/) from scikit-image's CC0 `brick` image."""

from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data

OUT = Path(__file__).resolve().parents[1] / "src" / "metauas" / "examples"


def main() -> None:
    brick = data.brick().astype(np.float32)  # 512x512 grey
    rgb = np.stack([brick * 0.9 + 20, brick * 0.75 + 30, brick * 0.6 + 25], -1).clip(0, 255).astype(np.uint8)
    shift = np.float32([[1, 0, 3], [0, 1, -2]])  # the query is not perfectly aligned
    query = cv2.warpAffine(rgb, shift, (512, 512), borderMode=cv2.BORDER_REFLECT)
    mask = np.zeros((512, 512), np.uint8)
    cv2.line(mask, (120, 140), (300, 230), 255, 7)  # scratch
    cv2.ellipse(mask, (360, 370), (38, 24), 30, 0, 360, 255, -1)  # stain
    stained = query.astype(np.float32)
    stained[mask > 0] = stained[mask > 0] * 0.35 + np.array([60, 20, 10]) * 0.65
    Image.fromarray(rgb).save(OUT / "prompt.png")
    Image.fromarray(stained.clip(0, 255).astype(np.uint8)).save(OUT / "query.png")
    Image.fromarray(mask).save(OUT / "query_mask.png")


if __name__ == "__main__":
    main()
