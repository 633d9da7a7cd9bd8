"""Quick start: a PyTorch SAM checkpoint -> jaxvrp -> a mask from a point and a box.

    python examples/sam_quickstart.py --out out/quickstart

No checkpoint can be downloaded here, so this builds the official ViT-B with random weights
(seeded), saves it as a `.pth` exactly as a user's file would be, converts it with
`conversion.sam`, and segments a generated sample image. With random weights the mask shows
that the pipeline runs end to end, not a meaningful segmentation; pass `--checkpoint` with a
real `sam_vit_*.pth` to see one.
"""

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from conversion import sam as sam_conversion
from jaxvrp.sam import Predictor


def sample_image(h: int = 480, w: int = 640) -> np.ndarray:
    """A 480x640 scene: a gradient background with a disc, a square and a triangle."""
    yy, xx = np.mgrid[:h, :w]
    bg = np.stack([60 + 80 * xx / w, 90 + 60 * yy / h, 140 + 0 * xx], axis=-1)
    img = Image.fromarray(bg.astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse((120, 140, 300, 320), fill=(220, 60, 50))
    d.rectangle((380, 90, 540, 250), fill=(240, 200, 40))
    d.polygon([(420, 420), (560, 420), (490, 300)], fill=(40, 170, 90))
    return np.asarray(img)


def random_official_checkpoint(path: Path, seed: int) -> Path:
    import torch

    from conversion.official import build_official_sam
    from jaxvrp.sam import get_config

    torch.manual_seed(seed)
    torch.save(build_official_sam(get_config("vit_b")).state_dict(), path)
    return path


def overlay(image, mask, point, box) -> Image.Image:
    out = image.astype(np.float32)
    out[mask] = 0.5 * out[mask] + 0.5 * np.array([30, 144, 255])
    img = Image.fromarray(out.astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.rectangle(tuple(box), outline=(0, 255, 0), width=3)
    x, y = point
    d.ellipse((x - 6, y - 6, x + 6, y + 6), fill=(255, 255, 255), outline=(0, 0, 0))
    return img


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/quickstart", help="output directory")
    parser.add_argument("--checkpoint", help="a real official SAM .pth (default: random ViT-B)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random ViT-B")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    if args.checkpoint:
        pth = Path(args.checkpoint)
    else:
        print(f"[1/4] building the official ViT-B with random weights (seed {args.seed})")
        pth = random_official_checkpoint(out / "sam_vit_b_random.pth", args.seed)
    print(f"[2/4] converting {pth.name} with conversion.sam")
    ckpt = sam_conversion.convert(pth, out / "sam_jax", overwrite=True)

    print("[3/4] embedding a 480x640 sample image (first call compiles)")
    predictor = Predictor.from_checkpoint(ckpt)
    image = sample_image()
    predictor.set_image(image)

    print("[4/4] predicting from a point and a box")
    point, box = (210, 230), (110, 130, 310, 330)
    masks, iou, _ = predictor.predict(
        point_coords=np.array([point]),
        point_labels=np.array([1]),
        box=np.array(box),
        multimask_output=False,
    )
    Image.fromarray(image).save(out / "image.png")
    Image.fromarray(masks[0].astype(np.uint8) * 255).save(out / "mask.png")
    overlay(image, masks[0], point, box).save(out / "overlay.png")
    print(
        f"mask covers {masks[0].mean():.1%} of the image, predicted IoU {iou[0]:.3f}; "
        f"wrote {out / 'overlay.png'} in {time.perf_counter() - t:.0f} s"
    )
    if not args.checkpoint:
        print("(random weights: this shows the pipeline, not a real segmentation)")


if __name__ == "__main__":
    main()
