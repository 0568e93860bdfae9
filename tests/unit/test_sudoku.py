"""Sudoku solver, generator and official CSV reader."""

import numpy as np
import pytest

from hrm_fast import sudoku
from hrm_fast.board_csv import BoardCsvError, write_rows

# A well-known 9x9 puzzle with one solution (blank = 0).
PUZZLE = "530070000600195000098000060800060003400803001700020006060000280000419005000080079"
SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"


def _digits(text):
    return [int(c) for c in text]


def test_solver_finds_the_unique_solution_and_counts_search():
    result = sudoku.solve(_digits(PUZZLE))
    assert result.solutions == 1
    assert result.solution == _digits(SOLUTION)
    assert result.nodes >= 1 and result.guesses >= 0


def test_solver_stops_at_two_and_rejects_clashes():
    empty = sudoku.solve([0] * 81)
    assert empty.solutions == 2
    clash = _digits(PUZZLE)
    clash[1] = 5  # two 5s in row 0
    assert sudoku.solve(clash).solutions == 0


def test_exclude_forbids_one_digit_in_one_cell():
    puzzle = _digits(PUZZLE)
    cell = puzzle.index(0)
    want = _digits(SOLUTION)[cell]
    assert sudoku.solve(puzzle, limit=1, exclude=(cell, want)).solutions == 0


@pytest.mark.parametrize("box,count", [(2, 40), (3, 12)])
def test_generated_puzzles_are_unique_and_labels_solve_them(box, count):
    made = sudoku.generate(count, seed=7, box=box)
    n = box * box
    assert made.puzzles.shape == (count, n * n) and made.solutions.shape == (count, n * n)
    for p, s, r in zip(made.puzzles, made.solutions, made.ratings, strict=True):
        result = sudoku.solve(p, box)
        assert result.solutions == 1
        assert result.solution == s.tolist()
        assert sudoku.is_solution(p, s, box)
        assert r == result.guesses
    assert (made.blanks > 0).all()


def test_generation_is_deterministic_per_seed():
    a = sudoku.generate(5, seed=3)
    b = sudoku.generate(5, seed=3)
    c = sudoku.generate(5, seed=4)
    assert np.array_equal(a.puzzles, b.puzzles) and np.array_equal(a.ratings, b.ratings)
    assert not np.array_equal(a.puzzles, c.puzzles)
    # Each puzzle has its own stream: the same set from two processes, and a prefix for fewer.
    split = sudoku.generate(5, seed=3, box=2, workers=2)
    assert np.array_equal(split.puzzles, sudoku.generate(5, seed=3, box=2, workers=1).puzzles)
    assert np.array_equal(sudoku.generate(3, seed=3).puzzles, a.puzzles[:3])


def test_filter_bounds_blanks_and_rating():
    easy = sudoku.generate(6, seed=1, max_blanks=30, max_rating=0)
    assert (easy.blanks <= 30).all() and (easy.ratings == 0).all()
    hard = sudoku.generate(3, seed=1, min_rating=5)
    assert (hard.ratings >= 5).all() and (hard.blanks > 40).all()
    with pytest.raises(ValueError, match="only 0 of 2"):
        sudoku.generate(2, seed=1, box=2, min_rating=10_000, max_tries=3)


def test_is_solution_catches_a_broken_grid():
    s = _digits(SOLUTION)
    assert sudoku.is_solution(_digits(PUZZLE), s)
    s[0], s[1] = s[1], s[0]
    assert not sudoku.is_solution(_digits(PUZZLE), s)


def test_encoding_is_the_official_one():
    assert sudoku.VOCAB == sudoku.vocab_size(3) == 11
    tokens = sudoku.encode(np.array([0, 1, 9]))
    assert tokens.tolist() == [1, 2, 10]
    assert sudoku.decode(tokens).tolist() == [0, 1, 9]


def test_csv_round_trip_in_the_official_format(tmp_path):
    made = sudoku.generate(4, seed=2)
    path = tmp_path / "train.csv"
    write_rows(path, sudoku.to_csv_rows(made))
    lines = path.read_text().splitlines()
    assert lines[0] == "source,q,a,rating" and len(lines[1].split(",")[1]) == 81
    back = sudoku.read_csv(path)
    assert np.array_equal(back.puzzles, made.puzzles)
    assert np.array_equal(back.solutions, made.solutions)
    assert back.ratings.tolist() == made.ratings.tolist()
    zeros = tmp_path / "zeros.csv"
    zeros.write_text(f"source,q,a,rating\nx,{PUZZLE},{SOLUTION},3\n")
    assert sudoku.read_csv(zeros).puzzles[0].tolist() == _digits(PUZZLE)
    assert len(sudoku.read_csv(path, min_rating=int(made.ratings.max()))) >= 1


@pytest.mark.parametrize(
    "row,message",
    [
        ("x,{q},{a},1,extra", "line 3: expected 4 fields"),
        ("x,{q}1,{a},1", "line 3: field q has 82 characters"),
        ("x,{q},{a_bad},1", "line 3: field a has 'x' at position 0"),
        ("x,{q},{a},hard", "line 3: field rating 'hard' is not an integer"),
        ("x,{q},{a_wrong},1", "line 3: field a does not solve field q"),
    ],
)
def test_csv_bad_rows_give_one_line(tmp_path, row, message):
    q = PUZZLE.replace("0", ".")
    good = f"x,{q},{SOLUTION},1"
    a_wrong = SOLUTION[1] + SOLUTION[0] + SOLUTION[2:]
    bad = row.format(q=q, a=SOLUTION, a_bad="x" + SOLUTION[1:], a_wrong=a_wrong)
    path = tmp_path / "bad.csv"
    path.write_text(f"source,q,a,rating\n{good}\n{bad}\n")
    with pytest.raises(BoardCsvError) as err:
        sudoku.read_csv(path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(path)) and message in text


def test_csv_header_and_missing_file(tmp_path):
    path = tmp_path / "noheader.csv"
    path.write_text(f"x,{PUZZLE},{SOLUTION},1\n")
    with pytest.raises(BoardCsvError, match="line 1: expected the header"):
        sudoku.read_csv(path)
    with pytest.raises(BoardCsvError, match="no such file"):
        sudoku.read_csv(tmp_path / "absent.csv")
