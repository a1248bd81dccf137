"""retinaface_export.mat5: the whole-cell decoder (decode_cell_columns) against scipy's loadmat.

The decoder gathers thousands of small matrices with a few array operations; scipy (and the element-by-element
``decode``) are the oracles. What it does not decode it must refuse (UnsupportedMatFile), never misread: the
ground truth then comes from scipy.
"""

import io

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from conftest import SHARED, require
from retinaface_export import mat5, widerface
from retinaface_export.errors import FileError
from retinaface_export.mat5 import Cell, UnsupportedMatFile, decode, decode_cell_columns, variable_bodies

GT_DIR = SHARED / "widerface" / "ground_truth"


def cell(items, shape=None):
    array = np.empty((len(items), 1) if shape is None else shape, dtype=object)
    for i, item in enumerate(items):
        array.flat[i] = item
    return array


def nested(groups):
    return cell([cell(group) for group in groups])


def as_scipy_reads(data, name):
    """The innermost elements of variable ``name`` as scipy reads them (column-major order, as MATLAB)."""
    outer = loadmat(io.BytesIO(data), variable_names=[name])[name]
    return [[inner.flatten(order="F")[j] for j in range(inner.size)] for inner in outer.flatten(order="F")], outer.shape


def assert_same_as_scipy(data, name):
    columns = decode_cell_columns(variable_bodies(data, {name})[name])
    groups, shape = as_scipy_reads(data, name)
    assert columns.dims == shape
    assert [len(group) for group in groups] == [int(np.prod(dims)) for dims in columns.inner_dims]
    leaves = [leaf for group in groups for leaf in group]
    assert len(columns.shapes) == len(leaves)
    if columns.texts is not None and leaves:
        assert columns.texts == [str(leaf[0]) if leaf.size else "" for leaf in leaves]
    else:
        assert columns.values is not None and columns.values.dtype == np.float64
        # scipy keeps empty matrices' shapes as written; 0x0 stands for MATLAB's empty element
        assert [tuple(s) for s in columns.shapes.tolist()] == [leaf.shape for leaf in leaves]
        expected = [np.asarray(leaf, dtype=float).reshape(-1) for leaf in leaves]
        assert np.array_equal(columns.values, np.concatenate(expected) if expected else np.zeros(0))
    # the element-by-element reader agrees too
    by_element = decode(variable_bodies(data, {name})[name])
    assert isinstance(by_element, Cell) and by_element.dims == columns.dims
    assert [inner.dims for inner in by_element.items] == columns.inner_dims
    return columns


def saved(variables, compress):
    buffer = io.BytesIO()
    savemat(buffer, variables, do_compression=compress)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("file", "name"),
    [
        ("wider_face_val.mat", "file_list"),
        ("wider_face_val.mat", "face_bbx_list"),
        ("wider_easy_val.mat", "gt_list"),
        ("wider_medium_val.mat", "gt_list"),
        ("wider_hard_val.mat", "gt_list"),
    ],
)
def test_cell_columns_equal_scipy_on_the_official_files(file, name):
    data = require(GT_DIR / file).read_bytes()
    columns = assert_same_as_scipy(data, name)
    assert len(columns.shapes) == 3226 and columns.dims == (61, 1)


RNG = np.random.default_rng(11)
# cells of cells scipy writes, each decoded whole: every storage type, small data elements (<= 4 bytes),
# the three orderings (vectors, one width, several widths), empty matrices and empty inner cells
ACCEPTED = {
    "boxes of every storage type": [
        [RNG.integers(0, 900, (3, 4)).astype(t) for t in ("u1", "i1", "u2", "i2", "u4", "i4")],
        [RNG.uniform(-5, 5, (2, 4)).astype("f4"), RNG.uniform(-5, 5, (5, 4))],
    ],
    "small data elements": [[np.array([[7]], np.uint8), np.array([[1], [2], [3], [4]], np.uint8)], [np.int16(-3)]],
    "several widths": [[np.arange(6.0).reshape(2, 3), np.arange(10, dtype="u2").reshape(5, 2)], [np.eye(3)]],
    "row and column vectors": [[np.arange(5.0)[None], np.arange(4, dtype="u1")[:, None]], [np.arange(3.0)]],
    "empty matrices and cells": [
        [np.zeros((0, 4)), np.zeros((0, 0)), np.zeros((1, 0), np.uint8)],
        [],
        [np.ones((1, 4))],
    ],
    "mixed types in one cell": [[np.array([[300, 2]], np.uint16), np.array([[1.5, 2.5]]), np.array([[9]], np.uint8)]],
    "64-bit integers (keep lists as NumPy writes them)": [[np.array([[1], [2]]), np.array([[3, 4]], np.uint64)]],
    "names": [[np.array(["0_Parade_marchingband_1_465"]), np.array(["a"]), np.array(["ab"])], [np.array(["x" * 70])]],
}


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("case", list(ACCEPTED))
def test_cell_columns_equal_scipy_on_files_scipy_writes(case, compress):
    data = saved({"v": nested(ACCEPTED[case])}, compress)
    assert_same_as_scipy(data, "v")


# what decode_cell_columns leaves to the element-by-element reader or to scipy: refused, never misread
REFUSED = {
    "a logical matrix": [[np.array([[True, False]])]],
    "a complex matrix": [[np.array([[1 + 2j]])]],
    "three dimensions": [[np.zeros((2, 2, 2))]],
    "a struct": [[{"a": np.ones(1)}]],
    "a third level of cells": [[cell([np.ones((1, 4))])]],
    "strings and numbers mixed": [[np.array(["ab"]), np.ones((1, 4))]],
    "a string of two rows": [[np.array(["ab", "cd"])]],
    "a string that is not ASCII": [[np.array(["caf\u00e9"])]],
    "an empty string": [[np.array([""])]],
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_cell_columns_refuse_what_they_do_not_decode(case):
    data = saved({"v": nested(REFUSED[case])}, compress=False)
    with pytest.raises(UnsupportedMatFile):
        decode_cell_columns(variable_bodies(data, {"v"})["v"])


def test_cell_columns_refuse_a_cell_that_is_not_of_cells():
    data = saved({"v": cell([np.ones((1, 4)), np.ones((2, 4))])}, compress=False)
    with pytest.raises(UnsupportedMatFile):
        decode_cell_columns(variable_bodies(data, {"v"})["v"])


@pytest.mark.parametrize("cut", [8, 60, 200, 1000])
def test_cell_columns_refuse_a_cell_cut_short(cut):
    data = saved({"v": nested(ACCEPTED["boxes of every storage type"])}, compress=False)
    body = variable_bodies(data, {"v"})["v"]
    with pytest.raises(UnsupportedMatFile):
        decode_cell_columns(body[: len(body) - cut])


def test_refused_ground_truth_is_read_by_scipy_instead(tmp_path):
    # WIDER's layout with a box matrix of three dimensions: the whole-cell decoder refuses, scipy reads it
    names = [["a_1", "b_2"], ["c_3"]]
    boxes = [[np.array([[1, 2, 3, 4]]), np.array([[5, 6, 7, 8], [9, 9, 9, 9]])], [np.ones((1, 4, 1))]]
    keep = [[np.array([[1]], np.uint8), np.array([[1], [2]], np.uint8)], [np.array([[1]], np.uint8)]]
    events = cell([np.array([e]) for e in ("0--A", "1--B")])
    files = nested([[np.array([n]) for n in event] for event in names])
    savemat(tmp_path / "wider_face_val.mat", {"event_list": events, "file_list": files, "face_bbx_list": nested(boxes)})
    for setting in ("easy", "medium", "hard"):
        savemat(tmp_path / f"wider_{setting}_val.mat", {"gt_list": nested(keep)})
    mats = {key: (tmp_path / name, (tmp_path / name).read_bytes()) for key, name in widerface._MAT_FILES.items()}
    assert widerface._ground_truth_mat5(tmp_path, mats) is None
    truth = widerface.load_ground_truth(tmp_path)
    assert truth.images == (("0--A", "a_1"), ("0--A", "b_2"), ("1--B", "c_3"))
    assert [b.tolist() for b in truth.boxes] == [[[1, 2, 3, 4]], [[5, 6, 7, 8], [9, 9, 9, 9]], [[1, 1, 1, 1]]]


def test_row_major_orders_match_numpy():
    # the three ways _row_major walks matrices stored column-major, against NumPy's own reshape
    for shapes in ([(1, 5), (1, 0), (1, 2)], [(3, 1), (0, 0), (2, 1)], [(3, 4), (0, 4), (1, 4)], [(2, 3), (4, 2)]):
        matrices = [np.arange(r * c).reshape(r, c) + 100 * i for i, (r, c) in enumerate(shapes)]
        stored = np.concatenate([m.flatten(order="F") for m in matrices])
        counts = np.array([r * c for r, c in shapes])
        first = np.cumsum(counts) - counts
        index = mat5._row_major(first, np.array(shapes, dtype=np.int64).reshape(-1, 2))
        assert np.array_equal(stored[index], np.concatenate([m.reshape(-1) for m in matrices]))


@pytest.mark.parametrize("byte", [0x80, 0xE9])
def test_cell_columns_refuse_names_that_are_not_ascii(byte):
    # the official names are UTF-8 (miUTF8): one byte per character while they are ASCII
    data = require(GT_DIR / "wider_face_val.mat").read_bytes()
    body = bytearray(variable_bodies(data, {"file_list"})["file_list"])
    at = body.find(b"0_Parade_")
    assert at > 0 and decode_cell_columns(memoryview(body)).texts[0].startswith("0_Parade_")
    body[at] = byte
    with pytest.raises(UnsupportedMatFile):
        decode_cell_columns(memoryview(body))
    with pytest.raises(UnsupportedMatFile):
        decode(memoryview(body))


def test_boxes_that_are_not_rows_of_four_are_named(tmp_path):
    events = cell([np.array(["0--A"])])
    files = nested([[np.array(["a_1"]), np.array(["b_2"])]])
    boxes = nested([[np.ones((1, 4)), np.ones((1, 3))]])
    savemat(tmp_path / "wider_face_val.mat", {"event_list": events, "file_list": files, "face_bbx_list": boxes})
    for setting in ("easy", "medium", "hard"):
        savemat(tmp_path / f"wider_{setting}_val.mat", {"gt_list": nested([[np.ones((1, 1)), np.ones((0, 1))]])})
    with pytest.raises(FileError, match=r"wider_face_val\.mat: not WIDER FACE validation ground truth .*b_2"):
        widerface.load_ground_truth(tmp_path)
