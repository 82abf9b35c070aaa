"""Choosing on reserved unlabelled photos (--choose-on): the fixed subset, its exclusion from
recovery training, the agreement / KL proxy, its rank correlation, and the tie-break using it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecnn.data.reserve import reserved_photos, without_reserved
from edgecnn.errors import UserError
from edgecnn.search.proxy import compare, rank_agreement


def _photos(root: Path, count: int, start: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        folder = root / f"set{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return root


def test_reserved_subset_is_fixed_by_path_and_salt(tmp_path):
    root = _photos(tmp_path / "photos", 30)
    a = reserved_photos(root, 10)
    assert len(a.paths) == 10 and a.available == 30 and "sha256" in a.rule
    assert reserved_photos(root, 10).paths == a.paths  # deterministic
    assert reserved_photos(root, 10, salt="other").paths != a.paths
    _photos(root, 20, start=30)  # new photos only displace reserved ones that rank above them
    b = reserved_photos(root, 10)
    kept = set(a.paths) & set(b.paths)
    assert all(p in kept or p not in a.paths for p in b.paths) and len(b.paths) == 10
    assert reserved_photos(root, 1000).paths.__len__() == 50  # fewer photos than asked: all of them


def test_reserved_subset_rejects_bad_folders(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        reserved_photos(tmp_path / "missing", 10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        reserved_photos(tmp_path / "empty", 10)


def test_recovery_training_never_sees_a_reserved_photo(tmp_path):
    from edgecnn.search.prepare import recovery_images

    root = _photos(tmp_path / "photos", 40)
    reserved = reserved_photos(root, 15)
    train = recovery_images(root, None, reserved)
    assert len(train) == 25 and not {p.resolve() for p in train} & {p.resolve() for p in reserved.paths}
    assert len(recovery_images(root, 10, reserved)) == 10  # the sample is drawn from what is left
    # A copy of a reserved photo under another folder is the same photo: left out by content.
    other = tmp_path / "copies"
    other.mkdir()
    shutil.copy(reserved.paths[0], other / "renamed.png")
    shutil.copy(train[0], other / "fine.png")
    kept, left_out = without_reserved(sorted(other.iterdir()), reserved)
    assert [p.name for p in kept] == ["fine.png"] and left_out == 1
    with pytest.raises(UserError, match="reserved"):
        recovery_images(root, None, reserved_photos(root, 100))


def test_proxy_is_agreement_and_kl_with_the_reference():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(50, 10))
    same = compare(reference, reference)
    assert same["agree"] == 100.0 and same["kl"] == pytest.approx(0.0, abs=1e-12) and same["photos"] == 50
    near, far = compare(reference, reference + 0.1 * rng.normal(size=(50, 10))), compare(reference, rng.normal(size=(50, 10)))
    assert far["agree"] < near["agree"] and far["kl"] > near["kl"] > 0


def test_rank_agreement_says_when_few_candidates_cannot_resolve_it():
    three = rank_agreement([97.0, 98.0, 99.0], [70.1, 70.3, 70.5])
    assert three["spearman"] == 1.0 and three["p_one_sided"] == pytest.approx(1 / 6, abs=1e-3) and not three["resolved"]
    six = rank_agreement([1, 2, 3, 4, 5, 6], [10, 20, 30, 40, 50, 60])
    assert six["p_one_sided"] == pytest.approx(1 / 720, abs=1e-4) and six["resolved"]
    reversed_six = rank_agreement([1, 2, 3, 4, 5, 6], [60, 50, 40, 30, 20, 10])
    assert reversed_six["spearman"] == -1.0 and not reversed_six["resolved"]
    assert rank_agreement([98.0], [70.0])["spearman"] is None
    assert rank_agreement([98.0, 98.0, 98.0], [70.0, 71.0, 72.0])["spearman"] is None  # all ties: no ranking


def test_tie_break_uses_the_reserved_photos_when_the_search_has_them():
    from edgecnn.search.run import choose
    from edgecnn.search.solve import Candidate

    def timed(name, agree_search, agree_photos, kl):
        cand = Candidate({"name": name}, predicted_ms=0.0, proxy=0.0, drop=0.5, feasible=True)
        cand.measured_ms = 3.0
        cand.info.update(signature=name, round_medians_ms=[3.0, 3.0, 3.01], fp32_agree=agree_search)
        if agree_photos is not None:
            cand.info["choose"] = {"agree": agree_photos, "kl": kl, "photos": 2000}
        return cand

    # On the search images a leads; on 2000 reserved photos b does: the photos decide.
    a, b = timed("a", 98.0, 95.0, 0.02), timed("b", 96.0, 97.5, 0.03)
    assert choose([a, b], fp32_ms=5.0) is b
    c, d = timed("c", 96.0, 97.5, 0.05), timed("d", 96.0, 97.5, 0.01)  # equal agreement: the smaller KL
    assert choose([c, d], fp32_ms=5.0) is d
    e, f = timed("e", 98.0, None, None), timed("f", 96.0, None, None)  # no photos: the search images, as before
    assert choose([e, f], fp32_ms=5.0) is e


def test_choose_on_flag_sets_the_search_stage_and_needs_max_drop(capsys):
    from edgecnn.cli import main

    main(["compress", "squeezenet", "--max-drop", "1", "--choose-on", "photos", "--choose-images", "500", "--print-recipe"])
    text = capsys.readouterr().out
    assert "choose_on: photos" in text and "choose_images: 500" in text
    for args, message in ((["--choose-on", "photos"], "--choose-on needs --max-drop"),
                          (["--choose-images", "50"], "--choose-images needs --max-drop")):
        with pytest.raises(SystemExit) as exit_info:
            main(["compress", "squeezenet", *args, "--print-recipe"])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_report_shows_which_images_chose_what():
    from edgecnn.report import search_section

    cand = {"predicted_ms": 2.0, "measured_ms": 2.1, "drop": 0.5, "feasible": True, "top1_evaluation": 70.25,
            "choose": {"agree": 97.45, "kl": 0.02, "photos": 2000}}
    search = {"max_drop": 1.0, "fp32_top1_search_part": 72.0, "chosen": cand, "uniform": {"w7a8": cand}, "verified": [],
              "choose": {"tie_break_on": "2000 reserved photos of distill/ (agreement with FP32, then KL)",
                         "rank_vs_search_top1": {"candidates": 3, "spearman": 1.0, "p_one_sided": 0.1667, "resolved": False}}}
    text = "\n".join(search_section(search))
    assert "| uniform w7a8 |" in text and "| 97.45 | 71.50 | 70.25 |" in text
    assert "decided on 2000 reserved photos of distill/" in text
    assert "Spearman +1.00 over 3 candidates" in text and "not resolved with 3 candidates" in text
