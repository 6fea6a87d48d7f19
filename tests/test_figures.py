"""bench.figures: every method's B′ on the same triplets, cut from a run directory."""

import numpy as np
from PIL import Image

from diffinv.bench.figures import first_of_each_family, method_comparison
from diffinv.bench.results import append_result
from diffinv.grid import image_grid

COLOURS = {"a": (255, 0, 0), "a_prime": (0, 255, 0), "b": (0, 0, 255), "truth": (255, 255, 0)}


def fake_run(run_dir, methods, triplets):
    """A run directory as `diffinv bench run` leaves it: B′ images, grids and results rows."""
    for index, (triplet_id, family) in enumerate(triplets):
        for number, method in enumerate(methods):
            b_prime = Image.new("RGB", (32, 32), (10 * number, 100, 200))
            paths = {"b_prime": f"images/{method}/{triplet_id}.png", "grid": f"grids/{method}/{triplet_id}.png"}
            for path in paths.values():
                (run_dir / path).parent.mkdir(parents=True, exist_ok=True)
            b_prime.save(run_dir / paths["b_prime"])
            tiles = [Image.new("RGB", (32, 32), COLOURS[k]) for k in ("a", "a_prime", "b")] + [b_prime]
            tiles.append(Image.new("RGB", (32, 32), COLOURS["truth"]))
            image_grid(tiles, ["A", "A'", "B", "B'", "true B'"], height=128).save(run_dir / paths["grid"])
            append_result(run_dir, {"method": method, "id": triplet_id, "index": index, "family": family, **paths})


def test_one_row_per_family_with_inputs_truth_and_every_method(tmp_path):
    methods = ["difference-inversion", "sdedit"]
    fake_run(tmp_path, methods, [("t0", "shape"), ("t1", "colour"), ("t2", "shape")])
    out = method_comparison(tmp_path, tmp_path / "figure.png", height=40)
    figure = np.asarray(Image.open(out).convert("RGB"))
    labelled, plain = 18 + 40, 18 + 40  # every row keeps image_grid's label band
    assert figure.shape[0] == labelled + plain  # two families: t0 and t1, not t2
    assert figure.shape[1] == 6 * 40 + 5 * 4  # A, A′, B, true B′ and two methods
    # the tiles are the run's own: A red, A′ green, B blue, the truth yellow, in that order
    middle = 18 + 20
    for column, colour in enumerate(COLOURS.values()):
        assert tuple(figure[middle, column * 44 + 20]) == colour


def test_rows_only_for_triplets_every_method_ran():
    rows = [
        {"method": m, "id": i, "index": n, "family": "dot"}
        for m, i, n in (("a", "t0", 0), ("a", "t1", 1), ("b", "t1", 1))
    ]
    assert first_of_each_family(rows, ["a", "b"]) == ["t1"]
