"""The wrists' height through a composed sentence, signs whole against signs cut at their connection
points with the joins smoothed (what `compose` does): does the hand drop between the signs?
docs/quality.md, "Joins".

    python bench/compose_heights.py docs/images/compose_halo_joins.png --model runs/default/best \
        --text H --text A --text L --text O --language gsg
"""
import argparse

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from t2p.generation.compose import compose, sign_requests  # noqa: E402
from t2p.model import T2PModel  # noqa: E402
from t2p.notation import SignText  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the picture (.png)")
    parser.add_argument("--model", default="runs/default/best")
    parser.add_argument("--text", action="append", required=True, help="one sign, in order (repeat)")
    parser.add_argument("--language", required=True)
    args = parser.parse_args()
    model = T2PModel.load(args.model)
    texts = sign_requests([SignText(text, "text", args.language) for text in args.text])
    names = [f"{c.name}:{p}" for c in model.skeleton.components for p in c.points]
    wrists = {side: names.index(f"POSE_LANDMARKS:{side.upper()}_WRIST") for side in ("right", "left")}
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
    ways = [("before: whole signs", dict(cut_at_connections=False, smooth=False)),
            ("after: cut at connection points, joins smoothed", {})]
    for ax, (title, options) in zip(axes, ways):
        composition = compose(model, texts, **options)  # from the model's neutral start
        for side, joint in wrists.items():
            seen = composition.confidence[:, joint] > 0
            ax.plot(np.where(seen, -composition.data[:, joint, 1], np.nan), label=f"{side} wrist")  # image y is down
        for segment in composition.segments:
            if segment.kind == "transition":
                ax.axvspan(segment.begin, segment.end, color="0.85")
            else:
                ax.text((segment.begin + segment.end) / 2, 0.0, segment.text, ha="center")
        ax.set_title(f"{title} ({len(composition)} frames)")
        ax.set_xlabel("frame")
    axes[0].set_ylabel("height (shoulder widths, up)")
    axes[0].legend(fontsize="small")
    figure.suptitle(f"{args.language} {'-'.join(args.text)} composed from the neutral start ({args.model}); "
                    "grey: transitions")
    figure.tight_layout()
    figure.savefig(args.out, dpi=90)
    print(args.out)


if __name__ == "__main__":
    main()
