"""The report says on how many of the manifest's held-out runs the held-out scores rest."""

from spectrum.report.sections import heldout_coverage


def _scores(listed: list[str], scored: list[str]) -> dict:
    return {"runs": [{"name": n, "role": "heldout"} for n in listed] + [{"name": "f", "role": "fit"}],
            "tests": {"heldout_runs": {"runs": [{"name": n} for n in scored]}}}


def test_all_heldout_runs_scored_is_said():
    assert heldout_coverage(_scores(["a", "b"], ["a", "b"])) == (
        "The held-out scores rest on all 2 held-out runs of the manifest.")


def test_a_score_on_one_of_five_heldout_runs_says_so_and_names_the_others():
    line = heldout_coverage(_scores(["a", "b", "c", "d", "e"], ["c"]))
    assert line.startswith("The held-out scores rest on 1 of the 5 held-out runs")
    assert line.endswith("a, b, d, e.")


def test_no_heldout_run_says_nothing_here():
    assert heldout_coverage(_scores([], [])) is None
